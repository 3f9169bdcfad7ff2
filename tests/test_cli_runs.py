"""End-to-end smoke runs through the CLI: search -> export -> train --arch -> eval for every task, and
the one-line errors (exit status 2) for bad input."""
from __future__ import annotations

import json

import pytest

from hrnas.cli import main
from hrnas.engine.checkpoint import find_latest, load_checkpoint
from hrnas.models import count_params, load_arch, spec_of
from hrnas.experiment import load_run


def _run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("task", ["imagenet", "cityscapes", "ade20k", "coco", "kitti"])
def test_search_export_train_eval(task, data_dir, tmp_path, capsys):
    search_dir, train_dir, arch_file = tmp_path / "search", tmp_path / "train", tmp_path / "arch.json"
    rc, out, _ = _run(["search", task, "--preset", "smoke", "--out", str(search_dir), "--no-progress"], capsys)
    assert rc == 0
    result = json.loads(out.strip().splitlines()[-1])
    metrics = result["metrics"]
    main_name = metrics["main"]
    assert 0.0 <= metrics[main_name] <= 100.0

    run = json.loads((search_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["step"] == run["total_steps"] == 4
    assert run["synthetic"]["preset"] == "smoke"
    # the smoke threshold (1.0) kills every channel whose gamma moved down: shrinking really happened
    assert run["shrink_history"] and run["shrink_history"][0]["removed_channels"] > 0
    assert run["profile"]["macs"] < run["profile"]["supernet_macs"]
    assert 0 < run["profile"]["macs_ratio"] < 1
    rows = [json.loads(line) for line in (search_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if f"val_{main_name}" in r] == [2, 4]
    assert (search_dir / "metrics.csv").read_text().splitlines()[0].startswith("step,epoch,lr")
    ckpt = load_checkpoint(find_latest(search_dir))
    assert ckpt["step"] == 4 and ckpt["arch"]["task"] == task

    rc, out, _ = _run(["export", str(search_dir), "--out", str(arch_file)], capsys)
    assert rc == 0
    spec = load_arch(arch_file)
    assert spec == run["arch"] and spec["task"] == task
    hidden = sum(sum(b["hidden"]) for b in spec["blocks"])
    assert hidden < sum(sum(b["hidden"]) for b in load_supernet_spec(task, spec)["blocks"])

    rc, out, _ = _run(["train", task, "--arch", str(arch_file), "--preset", "smoke", "--out", str(train_dir),
                       "--no-progress"], capsys)
    assert rc == 0
    trained = json.loads(out.strip().splitlines()[-1])["metrics"]
    train_run = json.loads((train_dir / "run.json").read_text())
    assert train_run["mode"] == "train" and train_run["shrink_history"] == []
    assert train_run["arch"]["blocks"] == spec["blocks"]  # retraining keeps the searched architecture

    rc, out, _ = _run(["eval", task, "--checkpoint", str(train_dir), "--json"], capsys)
    assert rc == 0
    evaluated = json.loads(out)
    # the stored recipe and the calibration seed of the step: the run's own final evaluation, exactly
    assert evaluated[main_name] == pytest.approx(trained[main_name], abs=1e-9)
    assert evaluated["step"] == 4

    loaded = load_run(train_dir)  # what the notebooks plot with: the trained network, in eval mode
    assert loaded.step == 4 and loaded.synthetic and loaded.label == "SYNTHETIC data, preset smoke"
    assert not loaded.net.training
    assert count_params(loaded.net) == count_params(loaded.task.build_model(spec))


def load_supernet_spec(task, spec):
    from hrnas.models import build_model

    return spec_of(build_model(task, **spec["model"]))


def test_bad_inputs_exit_2_with_one_line(data_dir, tmp_path, capsys):
    from hrnas.data import ensure_dataset

    for task in ("cityscapes", "kitti"):  # generated up front: its progress bars would share stderr
        ensure_dataset(task, "smoke", progress=False)
    arch = tmp_path / "coco_arch.json"
    from hrnas.models import build_model, save_arch

    save_arch(spec_of(build_model("coco", expand_ratio=1, attention="none")), arch)
    cases = [
        (["train", "cityscapes", "--arch", str(arch), "--preset", "smoke", "--out", str(tmp_path / "a")],
         "architecture is for task 'coco'"),
        (["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x.json")], "missing"),
        (["search", "cityscapes", "search.rho=-0.1", "--preset", "smoke", "--out", str(tmp_path / "b")],
         "search.rho=-0.1"),
        (["search", "cityscapes", "search.threshold=-1", "--preset", "smoke", "--out", str(tmp_path / "c")],
         "search.threshold=-1"),
        (["search", "cityscapes", "--preset", "paper", "--out", str(tmp_path / "d")], "--data-root"),
        (["search", "cityscapes", "--preset", "smoke", "--data-root", str(tmp_path / "nowhere"),
          "--out", str(tmp_path / "e")], "nowhere"),
        (["eval", "cityscapes", "--checkpoint", str(tmp_path / "none.pt")], "none.pt"),
        (["search", "kitti", "data.pillars=fast", "--preset", "smoke", "--out", str(tmp_path / "f")], "data.pillars"),
        (["search", "cityscapes", "--preset", "smoke", "--resume", "--out", str(tmp_path / "g")], "--resume"),
    ]
    for argv, needle in cases:
        rc, out, err = _run(argv, capsys)
        lines = err.strip().splitlines()
        assert rc == 2, (argv, err)
        assert len(lines) == 1 and needle in lines[0], (argv, err)


def test_load_run_names_what_is_missing(tmp_path):
    from hrnas.errors import UserError

    with pytest.raises(UserError, match=r"has no run\.json"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text('{"preset": "smoke", "data_root": "."}')
    with pytest.raises(UserError, match=r"has no checkpoint \(ckpt_\*\.pt\)"):
        load_run(tmp_path)


# ---------------------------------------------------------------------------------------------
# parser plumbing: overrides anywhere, --out checks
def test_overrides_may_follow_the_options():
    from hrnas.cli import build_parser, parse_args

    argv = ["search", "cityscapes", "optim.lr=0.1", "--out", "d", "search.rho=0.2", "--preset", "smoke",
            "eval.interval=1", "--no-progress"]
    args = parse_args(build_parser(), argv)
    assert args.overrides == ["optim.lr=0.1", "search.rho=0.2", "eval.interval=1"]
    assert (args.out.name, args.preset, args.no_progress) == ("d", "smoke", True)
    args = parse_args(build_parser(), ["eval", "coco", "--checkpoint", "c.pt", "--json", "eval.flip_test=false"])
    assert args.overrides == ["eval.flip_test=false"] and args.json


def test_override_after_out_reaches_the_config_check(data_dir, tmp_path, capsys):
    from hrnas.data import ensure_dataset

    ensure_dataset("cityscapes", "smoke", progress=False)
    cases = [
        (["search", "cityscapes", "--preset", "smoke", "--out", str(tmp_path / "a"), "no.such_key=1"],
         "override: unknown key 'no.such_key'"),
        (["search", "cityscapes", "--out", str(tmp_path / "b"), "--preset", "smoke", "search.rho=-0.1"],
         "search.rho=-0.1"),
        (["train", "cityscapes", "--arch", str(tmp_path / "arch.json"), "--out", str(tmp_path / "c"), "optim"],
         "override 'optim' is not of the form key=value"),
        (["search", "cityscapes", "--out", str(tmp_path / "d"), "--bogus", "search.rho=1"],
         "unrecognized arguments: --bogus"),
    ]
    for argv, needle in cases:
        rc, out, err = _run(argv, capsys)
        lines = err.strip().splitlines()
        assert rc == 2, (argv, err)
        assert len(lines) == 1 and needle in lines[0], (argv, err)
        assert "usage:" not in err
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_out_naming_a_file_exits_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    (tmp_path / "run").mkdir()
    cases = [
        (["search", "cityscapes", "--preset", "smoke", "--out", str(afile)], f"--out {afile} is a file"),
        (["search", "cityscapes", "--out", str(afile / "sub")], f"{afile} is a file, not a folder"),
        (["train", "coco", "--arch", str(afile), "--out", str(afile)], f"--out {afile} is a file"),
        (["data", "make", "kitti", "--out", str(afile)], f"--out {afile} is a file"),
        (["export", str(tmp_path / "run"), "--out", str(tmp_path)], f"--out {tmp_path} is a folder"),
        (["export", str(tmp_path / "run"), "--out", str(afile / "arch.json")], f"{afile} is a file, not a folder"),
        (["reproduce", "--only", "00", "--out", str(afile)], f"--out {afile} is a file"),
    ]
    for argv, needle in cases:
        rc, out, err = _run(argv, capsys)
        lines = err.strip().splitlines()
        assert rc == 2, (argv, err)
        assert lines == [lines[0]] and needle in lines[0], (argv, err)
    assert afile.read_text() == "not a folder"


# ---------------------------------------------------------------------------------------------
# hrnas eval coco --detections: the standard protocol's person boxes
@pytest.fixture(scope="module")
def coco_run(data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("coco_run")
    assert main(["search", "coco", "--preset", "smoke", "--out", str(run), "--no-progress"]) == 0
    return run


def _gt_boxes_as_detections(data_dir, score_of):
    """The smoke val GT person boxes (cleaned as the GT loader cleans them) as detection results."""
    from hrnas.data import ensure_dataset
    from hrnas.data.coco import _clean_box

    root = ensure_dataset("coco", "smoke", progress=False)
    gt = json.loads((root / "annotations" / "person_keypoints_val2017.json").read_text())
    images = {im["id"]: im for im in gt["images"]}
    dets = []
    for ann in gt["annotations"]:
        if ann["category_id"] != 1 or ann.get("iscrowd", 0) or max(ann["keypoints"]) == 0:
            continue
        im = images[ann["image_id"]]
        box = _clean_box(ann["bbox"], ann.get("area", ann["bbox"][2] * ann["bbox"][3]), im["width"], im["height"])
        if box is not None:
            dets.append({"image_id": ann["image_id"], "category_id": 1, "bbox": list(box),
                         "score": score_of(len(dets))})
    return dets


def test_eval_coco_with_detections(coco_run, data_dir, tmp_path, capsys):
    results = coco_run / "eval" / "keypoints_val_results.json"
    rc, out, _ = _run(["eval", "coco", "--checkpoint", str(coco_run), "--json"], capsys)
    assert rc == 0
    gt_metrics, gt_rows = json.loads(out), json.loads(results.read_text())
    assert gt_metrics["boxes"] == "gt"

    # the GT boxes, score 1, as a detection file: the same crops and scores -> the same results
    dets = _gt_boxes_as_detections(data_dir, lambda i: 1.0)
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps(dets + [{"image_id": dets[0]["image_id"], "category_id": 2,
                                            "bbox": [0, 0, 5, 5], "score": 1.0}]))  # not a person: skipped
    rc, out, _ = _run(["eval", "coco", "--checkpoint", str(coco_run), "--detections", str(det_file), "--json"], capsys)
    assert rc == 0
    det_metrics = json.loads(out)
    assert det_metrics["boxes"] == f"detections:{det_file}, score>=0.0"
    assert json.loads(results.read_text()) == gt_rows
    assert {k: det_metrics[k] for k in ("AP", "AR")} == {k: gt_metrics[k] for k in ("AP", "AR")}

    # scores 0.9 / 0.1 alternating and eval.det_score_thr=0.5 (an override after the option): half the boxes
    dets = _gt_boxes_as_detections(data_dir, lambda i: 0.9 if i % 2 == 0 else 0.1)
    det_file.write_text(json.dumps(dets))
    rc, out, _ = _run(["eval", "coco", "--checkpoint", str(coco_run), "--detections", str(det_file), "--json",
                       "eval.det_score_thr=0.5"], capsys)
    assert rc == 0
    assert json.loads(out)["boxes"] == f"detections:{det_file}, score>=0.5"
    kept = sum(d["score"] >= 0.5 for d in dets)
    assert 0 < kept < len(dets)
    per_image = {}
    for d in dets:
        if d["score"] >= 0.5:
            per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
    rows = json.loads(results.read_text())
    assert len(rows) <= kept and {r["image_id"] for r in rows} == set(per_image)
    assert all(r["score"] <= 0.9 for r in rows)


def test_eval_detections_bad_file_exits_2(coco_run, tmp_path, capsys):
    bad = {
        "missing.json": None,
        "notjson.json": "{broken",
        "dict.json": json.dumps({"annotations": []}),
        "nobbox.json": json.dumps([{"image_id": 1, "category_id": 1, "score": 0.5}]),
        "threebox.json": json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}]),
        "noperson.json": json.dumps([{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5}]),
    }
    for name, text in bad.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        rc, out, err = _run(["eval", "coco", "--checkpoint", str(coco_run), "--detections", str(path)], capsys)
        lines = err.strip().splitlines()
        assert rc == 2, (name, err)
        assert len(lines) == 1 and str(path) in lines[0], (name, err)
    rc, _, err = _run(["eval", "coco", "--checkpoint", str(coco_run), "--json", "no.such_key=1"], capsys)
    assert rc == 2 and "unknown key 'no.such_key'" in err
    rc, _, err = _run(["eval", "cityscapes", "--checkpoint", str(coco_run), "--detections", str(tmp_path / "dict.json")],
                      capsys)
    assert rc == 2 and "only for the coco task" in err


def test_released_architecture_retrains_with_the_fused_se_block(data_dir, tmp_path, capsys):
    """`hrnas train --arch NAME`: a shipped architecture, with the recipe's retraining options (here the
    HR-NAS†‡ ones of the paper-retrain preset, on the smoke data)."""
    out = tmp_path / "retrain"
    rc, stdout, err = _run(["train", "imagenet", "model.act=swish", "model.se_ratio=0.5", "model.dropout=0.28",
                            "--arch", "hrnas-a-imagenet", "--preset", "smoke", "--no-progress", "--out", str(out)],
                           capsys)
    assert rc == 0, err
    run = json.loads((out / "run.json").read_text())
    model = run["arch"]["model"]
    assert (model["act"], model["se_ratio"], model["se_on"], model["dropout"], model["num_classes"]) == \
        ("swish", 0.5, "hidden", 0.28, 10)
    assert run["arch"]["blocks"] == load_arch("hrnas-a-imagenet")["blocks"] and run["arch_file"] == "hrnas-a-imagenet"
    rc, stdout, _ = _run(["eval", "imagenet", "--checkpoint", str(out), "--json"], capsys)
    assert rc == 0 and json.loads(stdout)["top1"] == pytest.approx(run["metrics"]["top1"], abs=1e-9)


def test_fidelity_inputs_exit_2_with_one_line(data_dir, tmp_path, capsys):
    from hrnas.data import ensure_dataset

    ensure_dataset("cityscapes", "smoke", progress=False)
    cases = [
        (["search", "cityscapes", "model.se_ratio=0.5", "--preset", "smoke", "--out", str(tmp_path / "a")],
         "model.se_on=hidden with model.se_ratio set cannot be searched"),
        (["search", "cityscapes", "--preset", "paper-retrain", "--out", str(tmp_path / "b")],
         "unknown preset 'paper-retrain'; accepted: paper, tiny, smoke"),
        (["train", "imagenet", "--arch", "hrnas-z", "--preset", "smoke", "--out", str(tmp_path / "c")],
         "hrnas-z: no such architecture file, nor a shipped architecture (shipped: hrnas-a-imagenet"),
        (["train", "imagenet", "--arch", "hrnas-a-imagenet", "--preset", "paper-retrain", "--out", str(tmp_path / "d")],
         "--preset paper-retrain needs the real imagenet dataset"),
        (["search", "cityscapes", "train.amp=fp32", "--preset", "smoke", "--out", str(tmp_path / "e")],
         "train.amp='fp32' is not one of none, fp16, bf16"),
        (["profile", "imagenet", "--arch", "hrnas-a-imagenet", "--preset", "huge"], "unknown preset 'huge'"),
    ]
    for argv, needle in cases:
        rc, out, err = _run(argv, capsys)
        lines = err.strip().splitlines()
        assert rc == 2, (argv, err)
        assert len(lines) == 1 and needle in lines[0], (argv, err)
