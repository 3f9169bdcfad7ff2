"""hrnas.notebook: the sequence the task notebooks share (TaskRun) and the samplers their figures use.

One real smoke search (ImageNet, the fastest task) checks the whole TaskRun sequence and that the
network kept by ``evaluate`` is the evaluated one; the samplers are checked on crafted datasets."""
import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hrnas import notebook as nb
from hrnas.errors import UserError


# --------------------------------------------------------------------------------------------
# small pieces
def test_read_jsonl(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"step": 5, "task_loss": 1.5}\n\n{"step": 10, "task_loss": 1.4}\n')
    assert nb.read_jsonl(path) == [{"step": 5, "task_loss": 1.5}, {"step": 10, "task_loss": 1.4}]
    assert nb.read_jsonl(tmp_path / "missing.jsonl") == []
    path.write_text('{"step": 5}\n{"step": \n')
    with pytest.raises(UserError, match="steps.jsonl line 2: not JSON"):
        nb.read_jsonl(path)


def test_data_label():
    assert nb.data_label(True, "tiny") == "SYNTHETIC data, preset tiny"
    assert nb.data_label(False, "paper") == "real data, preset paper"


def test_class_iou_sorts_and_drops_absent_classes():
    table = nb.class_iou([0.5, float("nan"), 0.9, 0.1], ["road", "sidewalk", "sky ", "pole"])
    assert table["class"].tolist() == ["sky", "road", "pole"]
    assert table["IoU (%)"].tolist() == pytest.approx([90.0, 50.0, 10.0])
    with pytest.raises(UserError, match="^iou: 2 values for 3 classes"):
        nb.class_iou([0.1, 0.2], ["a", "b", "c"])


def test_class_names_from_the_synset_mapping(tmp_path):
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn90000001 square\n")
    assert nb.class_names(tmp_path, ["n01440764", "n90000001", "n99999999"]) == ["tench", "square", "n99999999"]
    assert nb.class_names(tmp_path / "elsewhere", ["n01440764"]) == ["n01440764"]


def _imagenet_folder(root: Path, per_class: dict[str, int]) -> None:
    for wnid, n in per_class.items():
        (root / "val" / wnid).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8 + i, 10, 3), 20 * i, np.uint8)).save(root / "val" / wnid / f"{wnid}_{i}.png")


def test_classification_samples_take_one_class_after_another(tmp_path):
    from hrnas.data.imagenet import ImageNetDataset

    _imagenet_folder(tmp_path, {"n0": 3, "n1": 1, "n2": 2})
    ds = ImageNetDataset(tmp_path, "val", transform=lambda img, g: img)
    indices, images, labels = nb.classification_samples(ds, 5)
    assert labels == [0, 1, 2, 0, 2] and indices == [0, 3, 4, 1, 5]
    assert images[3].shape == (9, 10, 3) and images[3].dtype == np.uint8  # the file as stored
    assert nb.classification_samples(ds, 50)[2] == [0, 1, 2, 0, 2, 0]  # no more than there are


def test_classify_returns_softmax_over_the_whole_dataset():
    class Fixed(torch.nn.Module):  # logits = the first pixel of each channel
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.scale * x[:, :, 0, 0]

    data = [(torch.full((3, 2, 2), 0.0).index_fill_(0, torch.tensor([k % 3]), 5.0), k % 3) for k in range(7)]
    probs, labels = nb.classify(SimpleNamespace(net=Fixed()), data, batch_size=3)
    assert probs.shape == (7, 3) and labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert np.allclose(probs.sum(1), 1) and (probs.argmax(1) == labels).all()
    assert probs[0, 0] == pytest.approx(np.exp(5) / (np.exp(5) + 2))


def test_segmentation_samplers():
    from hrnas.viz.seg import denormalize

    image = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    label = torch.zeros(8, 16, dtype=torch.int64)  # labels at twice the image's resolution
    label[:, 8:] = 3
    data = [(image, label)] * 3
    images, labels = nb.segmentation_samples(data, 2)
    # the image is shown at the label's size (the evaluation keeps labels at their original size)
    small = denormalize(image)
    assert len(images) == 2 and images[0].shape == (8, 16, 3) and labels[1].shape == (8, 16)
    # a bilinear (half-pixel-centre) upsampling of the de-normalised image, to the uint8 rounding
    up = torch.nn.functional.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None].double(), size=(8, 16),
                                         mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(images[0].astype(float) - up).max() <= 1.0
    assert not np.array_equal(images[0][:, :8], images[0][:, 8:])

    class Task:
        def val_dataset(self, root):
            return data

        def predict(self, net, x, size):  # class 3 on the right half of the input, class 1 elsewhere
            probs = torch.zeros(x.shape[0], 5, *x.shape[-2:])
            probs[:, 1] = 1.0
            probs[:, 1, :, 4:] = 0.0
            probs[:, 3, :, 4:] = 1.0
            return torch.nn.functional.interpolate(probs, size=size, mode="bilinear", align_corners=False)

    run = SimpleNamespace(task=Task(), net=torch.nn.Linear(1, 1), data_root=None)
    images, preds, gts = nb.segmentation_predictions(run, 5)
    assert len(preds) == 3 and preds[0].shape == (8, 16)  # upsampled to the label's size
    assert (preds[0][:, :8] == 1).all() and (preds[0][:, 8:] == 3).all()
    assert np.array_equal(gts[0], label.numpy())


def _coco_dataset(tmp_path):
    from hrnas.data.coco import load_coco

    (tmp_path / "val2017").mkdir()
    kp = np.zeros((17, 3))
    kp[:, :2] = np.arange(34).reshape(17, 2)
    kp[:, 2] = 2
    anns, images = [], []
    for i, people in ((7, 2), (3, 1), (9, 0)):
        images.append({"id": i, "file_name": f"{i}.png", "width": 40, "height": 30})
        Image.fromarray(np.full((30, 40, 3), i, np.uint8)).save(tmp_path / "val2017" / f"{i}.png")
        for p in range(people):
            anns.append({"id": 10 * i + p, "image_id": i, "category_id": 1, "bbox": [0, 0, 30, 30], "area": 900,
                         "iscrowd": 0, "num_keypoints": 17, "keypoints": (kp + [p, 0, 0]).reshape(-1).tolist()})
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}))
    return SimpleNamespace(coco=load_coco(path), image_dir=tmp_path / "val2017"), kp


def test_pose_samplers(tmp_path):
    ds, kp = _coco_dataset(tmp_path)
    images, people, ids = nb.pose_samples(ds, 5)
    assert ids == [3, 7]  # image 9 has nobody annotated
    assert images[0].shape == (30, 40, 3) and int(images[0][0, 0, 0]) == 3
    assert [len(p) for p in people] == [1, 2] and np.array_equal(people[1][1], kp + [1, 0, 0])
    results = [{"image_id": 7, "category_id": 1, "score": 0.9, "keypoints": (kp * [1, 1, 0.25]).reshape(-1).tolist()},
               {"image_id": 3, "category_id": 1, "score": 0.8, "keypoints": kp.reshape(-1).tolist()},
               {"image_id": 7, "category_id": 1, "score": 0.7, "keypoints": kp.reshape(-1).tolist()}]
    (tmp_path / "res.json").write_text(json.dumps(results))
    images, preds, gts, ids = nb.pose_predictions(tmp_path / "res.json", ds, 1)
    assert ids == [3] and len(preds[0]) == 1 and len(gts[0]) == 1
    images, preds, gts, ids = nb.pose_predictions(tmp_path / "res.json", ds, 5)
    assert ids == [3, 7] and len(preds[1]) == 2 and preds[1][0][:, 2].tolist() == [0.5] * 17
    with pytest.raises(UserError, match="no keypoint results file"):
        nb.pose_predictions(tmp_path / "nothing.json", ds, 1)


def test_kitti_samplers(tmp_path):
    from hrnas.data.synthetic.kitti import _calibration
    from hrnas.metrics import kitti as K
    from hrnas.tasks.detection3d import detections_to_kitti

    calib = _calibration()
    (tmp_path / "image_2").mkdir()
    Image.fromarray(np.full((375, 1242, 3), 7, np.uint8)).save(tmp_path / "image_2" / "000004.png")
    sample = {"points": torch.rand(50, 4), "gt_boxes": torch.tensor([[10.0, 0, -1, 4, 2, 1.5, 0]]),
              "gt_labels": torch.tensor([1]), "frame_id": "000004", "calib": calib}
    frame = nb.kitti_frame(_Indexable(tmp_path, sample), 0)
    assert frame["image"].shape == (375, 1242, 3) and frame["frame_id"] == "000004"
    # what the evaluation writes for a frame, read back: the detector's LiDAR boxes, scores and classes
    boxes = np.array([[12.0, 3.0, -0.9, 4.0, 1.7, 1.5, 0.4], [25.0, -6.0, -0.8, 0.8, 0.6, 1.8, -2.0]])
    pred = {"boxes": torch.tensor(boxes), "scores": torch.tensor([0.9, 0.2]), "labels": torch.tensor([1, 2])}
    K.write_result_file(tmp_path / "res" / "000004.txt", detections_to_kitti(pred, calib, (1242, 375)))
    back = nb.kitti_detections(tmp_path / "res", frame)
    assert back["labels"].tolist() == [1, 2] and back["scores"] == pytest.approx([0.9, 0.2])
    assert back["boxes"][:, :6] == pytest.approx(boxes[:, :6], abs=2e-4)  # 4 decimals in the file
    yaw = (back["boxes"][:, 6] - boxes[:, 6] + np.pi) % (2 * np.pi) - np.pi
    assert np.abs(yaw).max() < 1e-3
    with pytest.raises(UserError, match="no KITTI result file for frame 000004"):
        nb.kitti_detections(tmp_path / "nowhere", frame)


class _Indexable:
    def __init__(self, base, sample):
        self.base, self.sample = base, sample

    def __getitem__(self, i):
        return self.sample


# --------------------------------------------------------------------------------------------
# TaskRun on a real smoke search
@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HRNAS_DATA_DIR", str(out / "data"))
        run = nb.TaskRun.open("01_imagenet_classification", "imagenet", preset="smoke", out_dir=out / "runs",
                              figures_dir=out / "figures", progress=False)
        run.search()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            table = run.evaluate({"top1": "top-1", "top5": "top-5", "missing": "x"}, key="top-1", unit="%")
        yield run, table, printed.getvalue().splitlines()


def test_taskrun_needs_its_steps_in_order(tmp_path):
    run = nb.TaskRun(name="02_x", task="cityscapes", preset="smoke", out_dir=tmp_path, figures_dir=tmp_path,
                     data_root=tmp_path, marker=None, settings=[])
    assert run.label == "real data, preset smoke" and run.figure("predictions") == tmp_path / "02_x_predictions_smoke.png"
    with pytest.raises(UserError, match="^02_x: call search\\(\\) first"):
        run.evaluate({"mIoU": "mIoU"})
    with pytest.raises(UserError, match="^02_x: call evaluate\\(\\) first"):
        run.results_table()
    with pytest.raises(UserError, match="^02_x: call evaluate\\(\\) first"):
        run.eval_dir


def test_taskrun_search_and_evaluation(imagenet_run):
    from hrnas.experiment import evaluate_checkpoint

    run, table, _ = imagenet_run
    assert run.search_dir == run.final_dir == run.run_root / "search" and (run.run_root / "arch.json").is_file()
    assert run.synthetic and run.label == "SYNTHETIC data, preset smoke"
    assert set(run.ours) == {"top-1", "top-5"} and run.ours["top-1"] == run.evaluation["top1"]
    assert table.name == "ours (SYNTHETIC data, preset smoke)" and table["top-5"] == round(run.evaluation["top5"], 2)
    plain = evaluate_checkpoint("imagenet", run.final_dir, data_root=run.data_root)  # without return_model
    assert {k: plain[k] for k in ("top1", "top5", "step")} == {k: run.evaluation[k] for k in ("top1", "top5", "step")}
    # the kept network is the evaluated one: its predictions give the evaluation's top-1 again
    probs, labels = nb.classify(run.evaluated, run.val_dataset())
    assert 100 * float((probs.argmax(1) == labels).mean()) == pytest.approx(run.evaluation["top1"], abs=1e-6)
    assert run.eval_dir == run.final_dir / "eval"
    assert "no retraining" in run.describe_evaluation() and "4 steps" in run.describe_search()


def test_search_of_finds_the_run_a_notebook_used_even_when_reused(imagenet_run, tmp_path, monkeypatch):
    """Notebook 20 opens the search a task notebook used: its own, or (notebook 02 reusing the quick start's)
    the identical earlier run its search_run.json names, without searching again."""
    run, _, _ = imagenet_run
    out = run.out_dir
    assert nb.search_of(out, run.name, "imagenet", fallback_dir=tmp_path / "no").dir == run.search_dir
    again = nb.TaskRun.open("02_again", "imagenet", preset="smoke", out_dir=out, figures_dir=tmp_path, progress=False)
    assert again.search(reuse=[run.search_dir])["reused"] and not (out / "02_again" / "search").exists()
    monkeypatch.setattr(nb, "run_experiment", lambda *a, **k: pytest.fail("searched again"))
    assert nb.search_of(out, "02_again", "imagenet", fallback_dir=tmp_path / "no").dir == run.search_dir
    assert json.loads((out / "02_again" / nb.SEARCH_POINTER).read_text())["reused"] is True


def test_calibrated_network_without_metrics_and_a_run_without_its_network(imagenet_run):
    """What notebook 20 uses: the evaluated network without a pass over the val split (the same BN
    re-calibration, so the same weights and predictions), and a run opened without its checkpoint."""
    import torch

    from hrnas.experiment import evaluate_checkpoint, load_run

    run, _, _ = imagenet_run
    info, prepared = evaluate_checkpoint("imagenet", run.final_dir, data_root=run.data_root, return_model=True,
                                         metrics=False)
    assert set(info) == {"checkpoint", "step"} and info["step"] == run.evaluation["step"]
    evaluated = run.evaluated.net.state_dict()
    for name, value in prepared.net.state_dict().items():
        assert torch.equal(value, evaluated[name]), name
    with pytest.raises(UserError, match="metrics=False needs return_model=True"):
        evaluate_checkpoint("imagenet", run.final_dir, data_root=run.data_root, metrics=False)
    opened = load_run(run.final_dir, network=False)
    assert opened.net is None and opened.step == run.evaluation["step"] and opened.label == run.label
    assert type(opened.task) is type(prepared.task) and opened.data_root == prepared.data_root


def test_taskrun_evaluate_prints_the_network_and_the_expected_range(imagenet_run):
    run, _, lines = imagenet_run
    assert lines[0].startswith("evaluated the searched network (no retraining):")
    assert lines[1].startswith("top-1 ") and lines[1].endswith("no multi-seed table for this preset yet")  # smoke
    with pytest.raises(UserError, match="^key: 'AP' is not among our metrics"):
        run.evaluate({"top1": "top-1"}, key="AP")  # checked before evaluating


def test_taskrun_logs_curves_and_tables(imagenet_run):
    run, _, _ = imagenet_run
    steps, history = run.steps(), run.history()
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all("penalty" in r for r in steps)
    assert history[-1]["step"] == 4 and "macs" in history[-1]
    fig = run.plot_search()
    assert run.figure("search_curves").is_file() and fig.axes[0].get_title() == "task loss"
    cost = run.cost_table()
    assert list(cost.index) == ["super network", "searched"]
    assert cost.loc["searched", "MACs (G), true"] < cost.loc["super network", "MACs (G), true"]
    table = run.results_table()
    saved = pd.read_csv(run.figures_dir / "01_imagenet_classification_results_smoke.csv")
    assert list(saved.columns) == nb.RESULT_COLUMNS and "source" not in table.columns
    assert saved["metric"].iloc[:2].tolist() == ["top-1", "top-5"]
    assert (saved["confidence"].iloc[:2] == "computed in this notebook").all()
    assert set(saved["metric"].iloc[2:]) <= {"top-1", "top-5"} and len(saved) > 2  # published rows beside ours


def test_taskrun_record_keeps_the_notebooks_keys(imagenet_run):
    from hrnas.reproduce import read_metrics

    run, _, _ = imagenet_run
    run.record(key=["top-1"], extra={"extra number": 1.5})
    record = read_metrics(run.out_dir, run.name)
    assert list(record["metrics"]) == ["preset", "synthetic", "retrained", "top-1", "top-5", "extra number",
                                       "searched_params_M", "searched_MACs_G", "search_steps", "search_wall_time_s"]
    assert record["key"] == ["top-1"] and record["metrics"]["search_steps"] == 4
    assert record["metrics"]["searched_MACs_G"] == pytest.approx(run.hrnas_cost()["searched"].macs / 1e9)
