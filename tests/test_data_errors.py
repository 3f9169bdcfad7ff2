"""Bad input: one-line UserError messages naming the path / file / ids, also from DataLoader workers."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from hrnas.data import build_dataset, build_loader
from hrnas.data.kitti import Calibration, parse_label_file
from hrnas.errors import UserError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def copy(smoke, tmp_path):
    def _copy(name):
        dst = tmp_path / name
        shutil.copytree(smoke[name], dst)
        return dst
    return _copy


def _raises(fn, *fragments) -> str:
    with pytest.raises(UserError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for frag in fragments:
        assert str(frag) in msg, (frag, msg)
    return msg


def test_missing_root(tmp_path):
    for task in ("imagenet", "cityscapes", "ade20k", "coco", "kitti"):
        _raises(lambda: build_dataset(task, tmp_path / "nope", "train", train=True), tmp_path / "nope",
                "expected layout ROOT/")


@pytest.mark.parametrize("task,missing,layout", [
    ("imagenet", "train", "ROOT/train/<wnid>/*.JPEG"),
    ("cityscapes", "leftImg8bit/train", "ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png"),
    ("ade20k", "images/training", "ROOT/ADEChallengeData2016/images/{training,validation}/*.jpg"),
    ("coco", "annotations/person_keypoints_train2017.json", "ROOT/annotations/person_keypoints_{train,val}2017.json"),
    ("kitti", "ImageSets/train.txt", "ROOT/ImageSets/<split>.txt"),
])
def test_empty_root_names_path_and_layout(tmp_path, task, missing, layout):
    root = tmp_path / "empty"
    root.mkdir()
    _raises(lambda: build_dataset(task, root, "train", train=True), missing, layout)


def test_missing_split_and_unknown_names(copy):
    root = copy("cityscapes")
    shutil.rmtree(root / "leftImg8bit" / "val")
    _raises(lambda: build_dataset("cityscapes", root, "val", train=False), root / "leftImg8bit" / "val")
    _raises(lambda: build_dataset("cityscapes", root, "valid", train=False), "'valid'")
    _raises(lambda: build_dataset("voc", root, "train", train=True), "unknown task 'voc'")
    _raises(lambda: build_dataset("cityscapes", root, "train", train=True, crop=3), "unknown option(s) crop")
    _raises(lambda: build_dataset("cityscapes", root, "train", train=True, size=(0, 4)), "size must be positive")
    kitti = copy("kitti")
    _raises(lambda: build_dataset("kitti", kitti, "test", train=False), kitti / "ImageSets" / "test.txt")


def test_corrupt_and_truncated_images(copy):
    root = copy("cityscapes")
    ds = build_dataset("cityscapes", root, "train", train=False)
    img = ds.files[1][0]
    img.write_bytes(img.read_bytes()[:200])
    _raises(lambda: ds[1], "cannot read image", img)
    label = ds.files[2][1]
    label.write_bytes(b"not a png at all")
    _raises(lambda: ds[2], "cannot read label image", label)
    inet = copy("imagenet")
    jpg = sorted((inet / "train" / "n90000002").iterdir())[0]
    jpg.write_bytes(b"\xff\xd8\xff garbage")
    ds = build_dataset("imagenet", inet, "train", train=True, size=(32, 32))
    _raises(lambda: ds[6], jpg)


def test_label_ids_outside_the_table(copy):
    root = copy("cityscapes")
    for p in root.glob("gtFine/*/*/*_labelTrainIds.png"):
        p.unlink()
    ds = build_dataset("cityscapes", root, "train", train=False)
    path = ds.files[0][1]
    ids = np.array(Image.open(path))
    ids[0, :3] = [40, 41, 200]
    Image.fromarray(ids).save(path)
    _raises(lambda: ds[0], path, "40, 41, 200", "outside the Cityscapes label table")
    ade = copy("ade20k")
    ds = build_dataset("ade20k", ade, "train", train=False)
    path = ds.files[0][1]
    ann = np.array(Image.open(path))
    ann[5, 5] = 151
    Image.fromarray(ann).save(path)
    _raises(lambda: ds[0], path, "151")
    rgb = ds.files[1][1]
    Image.new("RGB", (160, 120)).save(rgb)
    _raises(lambda: ds[1], rgb, "mode RGB")


def test_kitti_bad_files(copy):
    root = copy("kitti")
    ds = build_dataset("kitti", root, "train", train=False)
    velo = root / "training" / "velodyne" / "000001.bin"
    velo.write_bytes(velo.read_bytes()[:-6])
    _raises(lambda: ds[1], velo, "truncated")
    label = root / "training" / "label_2" / "000002.txt"
    label.write_text("Car 0.00 0 1.0 1 2 3 4 1.5 1.6 3.9 1 2 3\n")
    _raises(lambda: ds[2], label, "line 1", "14 fields, expected 15")
    _raises(lambda: parse_label_file(root / "training" / "label_2" / "999999.txt"), "999999.txt")
    calib = root / "training" / "calib" / "000003.txt"
    calib.write_text("P2: 1 2 3\n")
    _raises(lambda: Calibration.from_file(calib), calib, "P2 with 12 numbers")
    (root / "ImageSets" / "val.txt").write_text("4\n")
    _raises(lambda: build_dataset("kitti", root, "val", train=False), "6 digits", "'4'")


def test_coco_bad_files(copy, tmp_path):
    root = copy("coco")
    ann = root / "annotations" / "person_keypoints_val2017.json"
    ann.write_text('{"images": [')
    _raises(lambda: build_dataset("coco", root, "val", train=False), ann, "not valid JSON")
    ann.write_text(json.dumps({"images": []}))
    _raises(lambda: build_dataset("coco", root, "val", train=False), ann, "lacks the keys")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1]}]))
    _raises(lambda: build_dataset("coco", root, "train", train=False, detections=dets), dets)
    shutil.rmtree(root / "images" / "train2017")
    _raises(lambda: build_dataset("coco", root, "train", train=True), root / "train2017",
            root / "images" / "train2017")


def test_imagenet_flat_val_without_labels(copy):
    root = copy("imagenet")
    for p in list((root / "val").glob("*/*.JPEG")):
        p.rename(root / "val" / p.name)
    (root / "LOC_val_solution.csv").unlink()
    _raises(lambda: build_dataset("imagenet", root, "val", train=False), root / "val",
            "LOC_val_solution.csv or val_labels.txt")


def test_worker_errors_surface_as_one_line_user_errors(copy):
    root = copy("coco")
    ds = build_dataset("coco", root, "train", train=True, size=(64, 48))
    broken = ds.records[3]["file"]
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    loader = build_loader(ds, "coco", batch_size=2, shuffle=False, num_workers=2, seed=0)
    msg = _raises(lambda: [b for b in loader], "cannot read image", broken)
    assert "Traceback" not in msg and "DataLoader worker" not in msg
