"""Generated miniature datasets: independent readers accept them, labels are consistent, generation is
deterministic and atomic."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import hrnas.data.synthetic as synthetic
from hrnas.data import DATASETS, default_root, ensure_dataset, make_dataset
from hrnas.data.kitti import (Calibration, camera_boxes_to_lidar, parse_label_file, points_in_boxes,
                              read_points)
from hrnas.data.labels import CITYSCAPES_LABELS, cityscapes_id_to_train_id_lut
from hrnas.errors import UserError


pytestmark = pytest.mark.usefixtures("one_thread")


def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_markers_and_readme(smoke):
    for name, root in smoke.items():
        marker = json.loads((root / "_SYNTHETIC").read_text())
        assert marker == {"dataset": name, "preset": "smoke", "seed": 0, "version": synthetic.generator_version(name)}
        assert "SYNTHETIC" in (root / "README.md").read_text()
        assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_torchvision_cityscapes_reads_semantic_targets(smoke):
    from torchvision.datasets import Cityscapes

    root = smoke["cityscapes"]
    ds = Cityscapes(str(root), split="train", mode="fine", target_type="semantic")
    assert len(ds) == 4
    img, target = ds[0]
    assert img.mode == "RGB" and img.size == (256, 128) and target.size == (256, 128)
    ids = np.asarray(target)
    assert set(np.unique(ids)) <= {lab.id for lab in CITYSCAPES_LABELS}
    assert 7 in ids and 23 in ids  # road and sky in every street scene
    val = Cityscapes(str(root), split="val", mode="fine", target_type=["instance", "color", "polygon"])
    inst, color, poly = val[0][1]
    assert poly["imgWidth"] == 256 and poly["imgHeight"] == 128 and poly["objects"]


def test_cityscapes_label_files_agree(smoke):
    lut = cityscapes_id_to_train_id_lut()
    palette = {lab.id: lab.color for lab in CITYSCAPES_LABELS}
    name_to_id = {lab.name: lab.id for lab in CITYSCAPES_LABELS}
    files = sorted((smoke["cityscapes"] / "gtFine").glob("*/*/*_gtFine_labelIds.png"))
    assert len(files) == 6
    for f in files:
        stem = str(f)[: -len("labelIds.png")]
        ids = np.asarray(Image.open(f))
        assert ids.dtype == np.uint8 and Image.open(f).mode == "L"
        assert np.array_equal(np.asarray(Image.open(stem + "labelTrainIds.png")), lut[ids])
        inst = np.asarray(Image.open(stem + "instanceIds.png")).astype(np.int64)
        assert np.array_equal(np.where(inst >= 1000, inst // 1000, inst), ids)
        assert (inst >= 1000).any()  # at least one thing instance (car) per frame
        color = np.asarray(Image.open(stem + "color.png"))
        assert color.shape == ids.shape + (4,) and (color[..., 3] == 255).all()
        for i in np.unique(ids):
            assert tuple(color[ids == i][0, :3]) == palette[int(i)]
        # re-rendering polygons.json in order reproduces labelIds exactly
        poly = json.loads(Path(stem + "polygons.json").read_text())
        canvas = Image.new("L", (poly["imgWidth"], poly["imgHeight"]), 0)
        draw = ImageDraw.Draw(canvas)
        for obj in poly["objects"]:
            value = name_to_id[obj["label"]]
            draw.polygon([tuple(p) for p in obj["polygon"]], fill=value, outline=value)
        assert np.array_equal(np.asarray(canvas), ids)


def test_imagefolder_reads_imagenet_layout(smoke):
    from torchvision.datasets import ImageFolder

    root = smoke["imagenet"]
    train, val = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
    assert len(train.classes) == 10 and train.classes == sorted(train.classes)
    assert train.classes[0] == "n90000000" and len(train) == 30 and len(val) == 10
    assert val.class_to_idx == train.class_to_idx
    img, label = train[29]
    assert label == 9 and img.mode == "RGB" and 64 <= min(img.size) <= max(img.size) <= 96
    rows = (root / "LOC_val_solution.csv").read_text().splitlines()
    assert rows[0] == "ImageId,PredictionString" and len(rows) == 11


def test_pycocotools_loads_and_scores_ground_truth(smoke):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root = smoke["coco"]
    for split, n_images in (("train", 6), ("val", 3)):
        coco = COCO(str(root / "annotations" / f"person_keypoints_{split}2017.json"))
        assert len(coco.getImgIds()) == n_images
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) >= n_images
        for ann in anns:
            img = coco.imgs[ann["image_id"]]
            assert (root / "images" / f"{split}2017" / img["file_name"]).is_file()
            k = np.array(ann["keypoints"]).reshape(17, 3)
            assert set(np.unique(k[:, 2])) <= {0, 1, 2}
            assert ann["num_keypoints"] == int((k[:, 2] > 0).sum())
            assert (k[k[:, 2] == 0, :2] == 0).all()
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"] and ann["area"] > 0
    # ground truth submitted as results scores AP 1.0 with the real COCOeval
    dets = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
            for a in anns if a["num_keypoints"] > 0]
    ev = COCOeval(coco, coco.loadRes(dets), "keypoints")
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate(); ev.accumulate(); ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_kitti_labels_have_15_fields_and_contain_their_points(smoke):
    root = smoke["kitti"]
    ids = (root / "ImageSets" / "train.txt").read_text().split()
    val = (root / "ImageSets" / "val.txt").read_text().split()
    assert ids == ["000000", "000001", "000002", "000003"] and val == ["000004", "000005"]
    assert (root / "ImageSets" / "trainval.txt").read_text().split() == ids + val
    n_labelled = 0
    for fid in ids + val:
        label_file = root / "training" / "label_2" / f"{fid}.txt"
        assert all(len(line.split()) == 15 for line in label_file.read_text().splitlines())
        calib = Calibration.from_file(root / "training" / "calib" / f"{fid}.txt")
        assert calib.P2[0, 0] == pytest.approx(721.5377)
        pts = read_points(root / "training" / "velodyne" / f"{fid}.bin")
        assert pts.shape[1] == 4 and 0 <= pts[:, 3].min() and pts[:, 3].max() <= 1
        objs = [o for o in parse_label_file(label_file) if o.type != "DontCare"]
        assert {o.type for o in objs} <= {"Car", "Pedestrian", "Cyclist"}
        boxes = camera_boxes_to_lidar(np.array([[*o.loc, o.h, o.w, o.l, o.ry] for o in objs]), calib)
        counts = points_in_boxes(pts, boxes).sum(axis=0)
        assert (counts > 0).all(), (fid, counts)
        n_labelled += len(objs)
        # the ground is at z = -1.73 in the LiDAR frame
        ground = pts[~points_in_boxes(pts, boxes).any(axis=1)]
        assert np.median(ground[:, 2]) == pytest.approx(-1.73, abs=0.05)
    assert n_labelled >= 12


def test_ade20k_layout(smoke):
    base = smoke["ade20k"] / "ADEChallengeData2016"
    imgs = sorted((base / "images" / "training").glob("ADE_train_*.jpg"))
    assert [p.name for p in imgs] == [f"ADE_train_{i:08d}.jpg" for i in range(1, 5)]
    for img in imgs:
        ann = np.asarray(Image.open(base / "annotations" / "training" / (img.stem + ".png")))
        assert ann.dtype == np.uint8 and ann.max() <= 150
        assert ann.shape == Image.open(img).size[::-1]
    info = (base / "objectInfo150.txt").read_text().splitlines()
    assert info[0].split("\t") == ["Idx", "Ratio", "Train", "Val", "Name"] and len(info) == 151
    assert len((base / "sceneCategories.txt").read_text().splitlines()) == 6


@pytest.mark.parametrize("name", DATASETS)
def test_generation_is_deterministic(name, smoke, tmp_path):
    again = make_dataset(name, tmp_path / "a", preset="smoke", seed=0)
    other = make_dataset(name, tmp_path / "b", preset="smoke", seed=1)
    ref = _tree_digest(smoke[name])
    assert _tree_digest(again) == ref
    digest_other = _tree_digest(other)
    data_files = [k for k in ref if k not in ("_SYNTHETIC", "README.md")]
    assert any(digest_other.get(k) != ref[k] for k in data_files)


def test_crash_during_generation_leaves_nothing(tmp_path, monkeypatch):
    import hrnas.data.synthetic.kitti as gen

    real = gen.generate

    def crash(out, preset, seed, tick):
        real(out, preset, seed, tick)
        raise RuntimeError("disk full")

    monkeypatch.setattr(gen, "generate", crash)
    with pytest.raises(RuntimeError):
        make_dataset("kitti", tmp_path / "k", preset="smoke", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_make_dataset_rejects_bad_input(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        make_dataset("coco", tmp_path / "full", preset="smoke")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(UserError, match="unknown dataset 'voc'"):
        make_dataset("voc", tmp_path / "v")
    with pytest.raises(UserError, match="unknown preset 'paper'"):
        make_dataset("coco", tmp_path / "p", preset="paper")


def test_default_root_and_ensure_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HRNAS_DATA_DIR", str(tmp_path))
    assert default_root("kitti", "smoke", 3) == tmp_path / "kitti-smoke-s3"
    root = ensure_dataset("kitti", "smoke", 3)
    assert root == tmp_path / "kitti-smoke-s3" and (root / "_SYNTHETIC").is_file()
    before = _tree_digest(root)

    import hrnas.data.synthetic.kitti as gen
    monkeypatch.setattr(gen, "generate", lambda *a, **k: pytest.fail("regenerated an existing dataset"))
    assert ensure_dataset("kitti", "smoke", 3) == root and _tree_digest(root) == before
    monkeypatch.undo()
    monkeypatch.setenv("HRNAS_DATA_DIR", str(tmp_path))

    marker = json.loads((root / "_SYNTHETIC").read_text())
    (root / "_SYNTHETIC").write_text(json.dumps({**marker, "version": 0}))  # stale generator version
    assert ensure_dataset("kitti", "smoke", 3) == root and _tree_digest(root) == before

    foreign = tmp_path / "coco-smoke-s0"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("user data")
    with pytest.raises(UserError, match="no _SYNTHETIC marker"):
        ensure_dataset("coco", "smoke", 0)
    assert (foreign / "mine.txt").exists()


def test_make_synthetic_script(tmp_path, capsys):
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "data_prep" / "make_synthetic.py"
    spec = importlib.util.spec_from_file_location("make_synthetic", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["imagenet", "--out", str(tmp_path / "in"), "--preset", "smoke", "--seed", "2"]) == 0
    assert json.loads((tmp_path / "in" / "_SYNTHETIC").read_text())["seed"] == 2
    assert "wrote synthetic imagenet (smoke, seed 2)" in capsys.readouterr().out
    assert mod.main(["imagenet", "--out", str(tmp_path / "in"), "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: output folder") and "\n" not in err


def test_generator_versions_are_the_documented_ones():
    """docs/datasets.md lists each generator's VERSION: bumping one (the cached data is regenerated) updates the docs."""
    import re
    from pathlib import Path

    from hrnas.data import synthetic

    text = (Path(__file__).resolve().parent.parent / "docs" / "datasets.md").read_text()
    line = text[text.index("Current versions"):].split("\n\n")[0].split(".\n")[0]
    documented = {name.lower(): int(v) for name, v in re.findall(r"(ImageNet|Cityscapes|COCO|ADE20K|KITTI) (\d+)", line)}
    assert documented == {name: synthetic.generator_version(name) for name in ("imagenet", "cityscapes", "coco", "ade20k", "kitti")}
