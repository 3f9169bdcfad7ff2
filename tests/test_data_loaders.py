"""Loaders on the generated miniatures: sample shapes, dtypes, label ranges and transform invariants."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hrnas.data import build_dataset, build_loader, collate_fn
from hrnas.data.coco import CocoKeypointsDataset
from hrnas.data.kitti import (REAL_RANGE, SYNTHETIC_RANGE, Calibration, KittiObject, boxes_to_corners,
                              camera_boxes_to_lidar, collate_kitti, lidar_boxes_to_camera, points_in_boxes)
from hrnas.data.pose_transforms import (affine_transform, flip_permutation, generate_heatmaps,
                                        get_affine_transform)
from hrnas.data.synthetic.kitti import CALIB_000000
from hrnas.errors import UserError
from hrnas.data.transforms import (ClsTrainTransform, PointPillarsAugment, SegTrainTransform,
                                   global_transform, keep_ratio_scale)

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- ImageNet

def test_imagenet_samples(smoke):
    train = build_dataset("imagenet", smoke["imagenet"], "train", train=True, size=(48, 40))
    assert len(train) == 30 and train.num_classes == 10
    img, label = train[11]
    assert img.shape == (3, 48, 40) and img.dtype == torch.float32 and label == 3
    val = build_dataset("imagenet", smoke["imagenet"], "val", train=False)
    a, la = val[4]
    b, _ = val[4]
    assert a.shape == (3, 224, 224) and torch.equal(a, b) and la == 4
    pixels = a * STD + MEAN
    assert pixels.min() >= -0.02 and pixels.max() <= 1.02  # ImageNet normalisation undone -> [0, 1]


def test_imagenet_flat_val_label_files(smoke, tmp_path):
    root = tmp_path / "flat"
    shutil.copytree(smoke["imagenet"], root)
    folder_labels = {p.stem: p.parent.name for p in (root / "val").glob("*/*.JPEG")}
    for p in list((root / "val").glob("*/*.JPEG")):
        p.rename(root / "val" / p.name)
        p.parent.rmdir() if not any(p.parent.iterdir()) else None
    ds = build_dataset("imagenet", root, "val", train=False, size=(32, 32))
    wnids = sorted(set(folder_labels.values()))
    assert [(p.stem, t) for p, t in ds.samples] == sorted((s, wnids.index(w)) for s, w in folder_labels.items())
    (root / "LOC_val_solution.csv").unlink()
    (root / "val_labels.txt").write_text("".join(f"{s}.JPEG {w}\n" for s, w in sorted(folder_labels.items())))
    ds2 = build_dataset("imagenet", root, "val", train=False, size=(32, 32))
    assert ds2.targets == ds.targets


def test_imagenet_grayscale_and_cmyk_become_rgb(smoke, tmp_path):
    root = tmp_path / "inet"
    shutil.copytree(smoke["imagenet"], root)
    first, second = sorted((root / "train" / "n90000000").iterdir())[:2]
    Image.open(first).convert("L").save(first, format="JPEG")
    Image.open(second).convert("CMYK").save(second, format="JPEG")
    ds = build_dataset("imagenet", root, "train", train=False, size=(32, 32))
    gray, _ = ds[0]
    assert ds[1][0].shape == gray.shape == (3, 32, 32)
    assert torch.allclose(gray[0] * 0.229 + 0.485, gray[1] * 0.224 + 0.456, atol=1e-5)  # R == G


def test_randaugment_is_seeded_by_the_augmentation_rng():
    img = Image.fromarray((np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3))
    plain = ClsTrainTransform((32, 32), flip_prob=0.0)
    ra = ClsTrainTransform((32, 32), flip_prob=0.0, randaugment=(2, 12))
    outs = [ra(img, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    ra(img, torch.Generator().manual_seed(3))
    assert torch.equal(torch.rand(1), before)  # the global RNG is left alone
    same_draws = ClsTrainTransform((32, 32), flip_prob=0.0, randaugment=(2, 12))
    same_draws.randaugment = lambda x: x  # the same random draws, no RandAugment ops
    assert any(not torch.equal(ra(img, torch.Generator().manual_seed(s)),
                               same_draws(img, torch.Generator().manual_seed(s))) for s in range(5))
    assert plain(img, torch.Generator().manual_seed(0)).shape == outs[0].shape == (3, 32, 32)


def test_tf_random_resized_crop_box_limits():
    t = ClsTrainTransform((224, 224))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = t.crop_box(300, 400, g)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        assert h * w >= 0.1 * 300 * 400 * 0.98  # min_object_covered 0.1 (up to rounding)


# ---------------------------------------------------------------------------- segmentation

def test_cityscapes_train_and_eval_samples(smoke):
    train = build_dataset("cityscapes", smoke["cityscapes"], "train", train=True, size=(64, 128), seed=1)
    img, mask = train[0]
    assert img.shape == (3, 64, 128) and img.dtype == torch.float32
    assert mask.shape == (64, 128) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= set(range(19)) | {255}
    val = build_dataset("cityscapes", smoke["cityscapes"], "val", train=False, size=(64, 128))
    img, mask = val[1]
    # img_scale = 2 x crop = (256, 128): the native 256x128 frame, not resized
    assert img.shape == (3, 128, 256) and mask.shape == (128, 256)
    trainids = np.asarray(Image.open(str(val.files[1][0]).replace("leftImg8bit", "gtFine", 1)
                                     .replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")))
    assert np.array_equal(mask.numpy(), trainids)


def test_small_splits_are_decoded_once(smoke, monkeypatch):
    """A small split keeps its decoded images and labels (read-only) after the first read and gives the same
    samples; a split over DECODE_ONCE_MAX_BYTES reads its files every time."""
    from hrnas.data import segmentation

    train = build_dataset("cityscapes", smoke["cityscapes"], "train", train=True, size=(64, 128), seed=1)
    first = train.decoded(0)
    assert all(a is b for a, b in zip(train.decoded(0), first)) and not first[1].flags.writeable
    monkeypatch.setattr(segmentation, "DECODE_ONCE_MAX_BYTES", 1000)
    uncached = build_dataset("cityscapes", smoke["cityscapes"], "train", train=True, size=(64, 128), seed=1)
    assert uncached.decoded(0)[0] is not uncached.decoded(0)[0]
    for index in (0, 1):
        for a, b in zip(train[index], uncached[index]):
            assert torch.equal(a, b)


def test_cityscapes_label_ids_path_matches_train_ids(smoke, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(smoke["cityscapes"], root)
    for p in root.glob("gtFine/*/*/*_labelTrainIds.png"):
        p.unlink()
    a = build_dataset("cityscapes", smoke["cityscapes"], "train", train=False, size=(64, 128))
    b = build_dataset("cityscapes", root, "train", train=False, size=(64, 128))
    assert b.files[0][1].name.endswith("_gtFine_labelIds.png")
    for i in range(len(a)):
        assert torch.equal(a[i][1], b[i][1]) and torch.equal(a[i][0], b[i][0])


def test_seg_train_transform_invariants():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, (40, 60)).astype(np.uint8)
    mask[:5] = 255
    img = Image.fromarray(np.repeat(mask[..., None] * 40, 3, axis=2).astype(np.uint8))
    g = torch.Generator().manual_seed(0)
    big = SegTrainTransform((64, 96), img_scale=(60, 40), ratio_range=(1.0, 1.0), flip_prob=0.0, photometric=False)
    x, m = big(img, mask, g)
    assert torch.equal(m[:40, :60], torch.from_numpy(mask).long())          # crop larger than image: pad
    assert (m[40:] == 255).all() and (m[:, 60:] == 255).all()
    assert torch.allclose(x[:, 40:, :], (-MEAN / STD).expand(3, 24, 96))   # image padded with 0
    flip = SegTrainTransform((40, 60), img_scale=(60, 40), ratio_range=(1.0, 1.0), flip_prob=1.0, photometric=False)
    _, mf = flip(img, mask, g)
    assert torch.equal(mf, torch.from_numpy(mask[:, ::-1].copy()).long())
    scaled = SegTrainTransform((30, 30), img_scale=(60, 40), ratio_range=(0.5, 2.0))
    for _ in range(10):
        x, m = scaled(img, mask, g)
        assert x.shape == (3, 30, 30) and m.dtype == torch.int64
        assert set(m.unique().tolist()) <= set(np.unique(mask).tolist())  # nearest: no new labels
    assert keep_ratio_scale(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert keep_ratio_scale(300, 400, (2048, 512)) == (512, 683)


def test_ade20k_reduce_zero_label(smoke):
    raw_ds = build_dataset("ade20k", smoke["ade20k"], "val", train=False, size=(120, 40), reduce_zero_label=False)
    ds = build_dataset("ade20k", smoke["ade20k"], "validation", train=False, size=(120, 40))
    raw = np.asarray(Image.open(ds.files[0][1]))
    assert raw_ds[0][1].shape == (120, 160)  # img_scale (4W, H) = (160, 120): native size
    assert np.array_equal(raw_ds[0][1].numpy(), raw)
    expect = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    assert np.array_equal(ds[0][1].numpy(), expect)
    assert ds.num_classes == 150 and ds.classes[0] == "wall"
    nested = build_dataset("ade20k", smoke["ade20k"] / "ADEChallengeData2016", "val", train=False)
    assert nested.files == ds.files  # ROOT may also be the ADEChallengeData2016 folder itself


def test_segmentation_eval_resizes_the_image_only(smoke):
    """mmseg's test pipeline: keep-ratio resize of the image to img_scale (no padding to a multiple of
    32), the label untouched at its original size."""
    val = build_dataset("cityscapes", smoke["cityscapes"], "val", train=False, img_scale=(150, 70))
    img, mask = val[1]
    assert img.shape == (3, 70, 140) and mask.shape == (128, 256)  # factor min(150/256, 70/128) = 0.547
    assert torch.equal(mask, torch.from_numpy(val.load_label(1).astype(np.int64)))
    with pytest.raises(UserError, match="unknown option"):
        build_dataset("cityscapes", smoke["cityscapes"], "val", train=False, size_divisor=32)


def test_segmentation_collate_pads_with_ignore():
    batch = [(torch.ones(3, 4, 6), torch.zeros(4, 6, dtype=torch.long)),
             (torch.ones(3, 8, 5), torch.ones(8, 5, dtype=torch.long))]
    imgs, masks = collate_fn("ade20k")(batch)
    assert imgs.shape == (2, 3, 8, 6) and masks.shape == (2, 8, 6)
    assert (masks[0, 4:] == 255).all() and (masks[1, :, 5] == 255).all() and (imgs[0, :, 4:] == 0).all()
    image, mask = collate_fn("ade20k")([(torch.ones(3, 5, 7), torch.zeros(10, 14, dtype=torch.long))])
    assert image.shape == (1, 3, 5, 7) and mask.shape == (1, 10, 14)  # evaluation: the label's own size


# ---------------------------------------------------------------------------- COCO

def test_affine_transform_round_trip():
    t = get_affine_transform((100.0, 80.0), (0.5, 0.6667), 30.0, (48, 64))
    inv = get_affine_transform((100.0, 80.0), (0.5, 0.6667), 30.0, (48, 64), inv=True)
    pts = np.array([[100.0, 80.0], [130.0, 60.0], [0.0, 0.0]])
    assert np.allclose(affine_transform(pts[0], t), [24, 32])            # centre -> crop centre
    assert np.allclose(affine_transform(affine_transform(pts, t), inv), pts)
    # scale: box width 100 px -> 48 px; rotation preserves distances up to that factor
    d = np.linalg.norm(affine_transform(pts[1], t) - affine_transform(pts[0], t))
    assert d == pytest.approx(math.hypot(30, 20) * 48 / 100)


def test_heatmap_targets():
    joints = np.zeros((17, 2))
    joints[0] = (20.0, 30.0)
    joints[1] = (500.0, 30.0)
    vis = np.zeros(17)
    vis[:2] = 1
    hm, w = generate_heatmaps(joints, vis, (48, 64), (12, 16), sigma=2)
    assert hm.shape == (17, 16, 12) and w.tolist() == [1, 0] + [0] * 15
    assert np.unravel_index(hm[0].argmax(), hm[0].shape) == (8, 5) and hm[0].max() == 1.0
    assert hm[0, 8, 7] == pytest.approx(math.exp(-4 / 8))
    assert hm[1:].sum() == 0


def test_coco_samples_and_meta_map_back(smoke):
    ds = build_dataset("coco", smoke["coco"], "val", train=False, size=(128, 96))
    assert ds.coco.getImgIds() == [500001, 500002, 500003]
    s = ds[0]
    assert s["image"].shape == (3, 128, 96) and s["heatmaps"].shape == (17, 32, 24)
    assert s["target_weight"].shape == (17,) and s["center"].shape == (2,) and s["scale"].shape == (2,)
    ann = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=int(s["image_id"])))
    gt = [np.array(a["keypoints"], float).reshape(17, 3) for a in ann if a["num_keypoints"] > 0][0]
    inv = get_affine_transform(s["center"].numpy(), s["scale"].numpy(), 0, (96, 128), inv=True)
    vis = gt[:, 2] > 0
    assert np.allclose(affine_transform(s["joints"][vis, :2].numpy(), inv), gt[vis, :2], atol=1e-3)
    assert torch.equal(s["target_weight"] > 0, torch.from_numpy(vis))
    for j in np.nonzero(vis)[0]:  # heatmap peaks at the joint / 4
        peak = np.unravel_index(s["heatmaps"][j].argmax().item(), (32, 24))
        assert abs(peak[1] - s["joints"][j, 0] / 4) <= 0.5 and abs(peak[0] - s["joints"][j, 1] / 4) <= 0.5
    assert s["area"] == pytest.approx(float((s["scale"] * 200).prod()))


def test_coco_flip_swaps_and_mirrors_keypoints(smoke):
    kw = dict(train=True, size=(128, 96), half_body_prob=0.0, scale_factor=0.0, rot_prob=0.0)
    plain = CocoKeypointsDataset(smoke["coco"], "train", flip_prob=0.0, **kw)
    flipped = CocoKeypointsDataset(smoke["coco"], "train", flip_prob=1.0, **kw)
    perm = flip_permutation()
    for i in range(3):
        a, b = plain[i], flipped[i]
        assert torch.equal(b["joints"][:, 2], a["joints"][perm, 2])
        vis = b["joints"][:, 2] > 0
        assert torch.allclose(b["joints"][vis, 0], 96 - a["joints"][perm][vis, 0], atol=1e-3)
        assert torch.allclose(b["joints"][vis, 1], a["joints"][perm][vis, 1], atol=1e-3)
        # the image is mirrored too (HRNet's flip is off by one pixel: x -> W - x)
        mirrored = torch.flip(a["image"], dims=[2])[:, :, :-1]
        assert (b["image"][:, :, 1:] - mirrored).abs().mean() < 0.1


def test_coco_augmentation_ranges(smoke):
    plain = build_dataset("coco", smoke["coco"], "train", train=False, size=(128, 96))
    aug = build_dataset("coco", smoke["coco"], "train", train=True, size=(128, 96), seed=3, half_body_prob=0.0,
                        flip_prob=0.0, rot_prob=1.0)
    for i in range(len(plain)):
        a, b = plain[i], aug[i]
        ratio = float(b["scale"][0] / a["scale"][0])
        assert 0.65 - 1e-6 <= ratio <= 1.35 + 1e-6 and 0 < abs(float(b["rotation"])) <= 90
        assert torch.equal(a["center"], b["center"])
        # joints are the same image points seen through the augmented warp
        t = get_affine_transform(b["center"].numpy(), b["scale"].numpy(), float(b["rotation"]), (96, 128))
        inv = get_affine_transform(a["center"].numpy(), a["scale"].numpy(), 0, (96, 128), inv=True)
        vis = a["joints"][:, 2] > 0
        expect = affine_transform(affine_transform(a["joints"][vis, :2].numpy(), inv), t)
        assert np.allclose(b["joints"][vis, :2].numpy(), expect, atol=1e-3)
    half = build_dataset("coco", smoke["coco"], "train", train=True, size=(128, 96), half_body_prob=1.0,
                         scale_factor=0.0, rot_prob=0.0, flip_prob=0.0)
    smaller = [float(half[i]["scale"][1]) < float(plain[i]["scale"][1]) for i in range(len(plain))
               if (plain[i]["joints"][:, 2] > 0).sum() > 8]
    assert len(smaller) >= 4 and sum(smaller) >= len(smaller) / 2  # half-body boxes are mostly tighter


def test_coco_detection_boxes(smoke, tmp_path):
    coco_gt = build_dataset("coco", smoke["coco"], "val", train=False).coco
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.3 + 0.1 * i}
            for i, a in enumerate(coco_gt.dataset["annotations"])]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    ds = build_dataset("coco", smoke["coco"], "val", train=False, detections=path, det_score_thr=0.35)
    assert len(ds) == len(dets) - 1
    s = ds[0]
    assert float(s["score"]) == pytest.approx(0.4) and float(s["target_weight"].sum()) == 0


# ---------------------------------------------------------------------------- KITTI

def _calib():
    v = {k: np.array(r.split(), float) for k, _, r in (ln.partition(":") for ln in CALIB_000000.splitlines())}
    return Calibration(v["P2"], v["R0_rect"], v["Tr_velo_to_cam"])


def test_kitti_real_label_line_conversions():
    calib = _calib()
    # real KITTI training/label_2/000000.txt
    o = KittiObject("Pedestrian", 0.0, 0, -0.20, (712.40, 143.00, 810.73, 307.92), 1.89, 0.48, 1.20,
                    (1.84, 1.47, 8.41), 0.01)
    cam = np.array([[*o.loc, o.h, o.w, o.l, o.ry]])
    box = camera_boxes_to_lidar(cam, calib)[0]
    assert box[0] == pytest.approx(8.70, abs=0.02) and box[1] == pytest.approx(-1.83, abs=0.02)
    assert box[2] == pytest.approx(-1.47 + 1.89 / 2 + 0.02, abs=0.05)   # centre, not bottom
    assert box[3:6].tolist() == [1.20, 0.48, 1.89] and box[6] == pytest.approx(-0.01 - math.pi / 2)
    assert np.allclose(lidar_boxes_to_camera(box[None], calib), cam)
    uv, depth = calib.rect_to_img(calib.lidar_to_rect(boxes_to_corners(box[None])[0]))
    assert (depth > 0).all()
    assert np.allclose([*uv.min(0), *uv.max(0)], o.bbox, atol=25)     # projects onto the labelled 2D box
    pts = np.array([[10.0, 2.0, -1.0], [30.0, -5.0, 0.5]])
    assert np.allclose(calib.rect_to_lidar(calib.lidar_to_rect(pts)), pts)


def test_kitti_samples(smoke):
    ds = build_dataset("kitti", smoke["kitti"], "train", train=False, point_cloud_range=SYNTHETIC_RANGE)
    s = ds[0]
    pts, boxes = s["points"], s["gt_boxes"]
    assert pts.dtype == torch.float32 and pts.shape[1] == 4 and boxes.shape[1] == 7
    assert s["gt_labels"].dtype == torch.int64 and set(s["gt_labels"].tolist()) <= {1, 2, 3}
    lo, hi = torch.tensor(SYNTHETIC_RANGE[:3]), torch.tensor(SYNTHETIC_RANGE[3:])
    assert ((pts[:, :3] >= lo) & (pts[:, :3] < hi)).all()
    assert s["frame_id"] == "000000" and isinstance(s["calib"], Calibration)
    assert (points_in_boxes(pts.numpy(), boxes.numpy()).sum(0) > 0).all()
    real = build_dataset("kitti", smoke["kitti"], "train", train=False)      # default: real KITTI range
    assert real.point_cloud_range == REAL_RANGE and len(real[0]["points"]) >= len(pts)
    # FOV: every kept point projects into the 1242x375 image
    uv, depth = s["calib"].rect_to_img(s["calib"].lidar_to_rect(pts.numpy()))
    assert (depth > 0).all() and (uv[:, 0] >= 0).all() and (uv[:, 0] < 1242).all()


def test_kitti_augmentation_moves_boxes_with_points(smoke):
    ds = build_dataset("kitti", smoke["kitti"], "train", train=False, point_cloud_range=REAL_RANGE)
    s = ds[1]
    pts, boxes = s["points"].numpy(), s["gt_boxes"].numpy()
    inside = points_in_boxes(pts, boxes)
    g = torch.Generator().manual_seed(0)
    aug = PointPillarsAugment()
    for _ in range(5):
        p2, b2 = aug(pts, boxes, g)
        assert np.array_equal(points_in_boxes(p2, b2), inside)
    p, b = global_transform(pts, boxes, flip=True, angle=math.pi / 2, scale=2.0, shift=(1.0, 0.0, 0.0))
    assert np.allclose(p[:, 0], 2 * pts[:, 1] + 1, atol=1e-5) and np.allclose(p[:, 1], 2 * pts[:, 0], atol=1e-5)
    assert np.allclose(b[:, 3:6], 2 * boxes[:, 3:6])
    flip_only = build_dataset("kitti", smoke["kitti"], "train", train=True, point_cloud_range=REAL_RANGE,
                              flip_prob=1.0, rot_range=(0.0, 0.0), scale_range=(1.0, 1.0), translate_std=0.0)
    t = flip_only[1]
    mirrored = pts * np.array([1, -1, 1, 1], np.float32)
    assert np.array_equal(np.unique(t["points"].numpy(), axis=0), np.unique(mirrored, axis=0))
    assert not np.array_equal(t["points"].numpy(), mirrored[np.lexsort(mirrored.T[::-1])])  # shuffled
    assert np.allclose(t["gt_boxes"][:, 1], -boxes[:, 1])
    yaw = t["gt_boxes"][:, 6].numpy()
    assert np.allclose(np.cos(yaw), np.cos(boxes[:, 6]), atol=1e-5) and np.allclose(np.sin(yaw), -np.sin(boxes[:, 6]), atol=1e-5)
    assert (np.abs(yaw) <= np.pi).all()


def test_collate_kitti():
    batch = [{"points": torch.ones(3, 4), "gt_boxes": torch.ones(2, 7), "gt_labels": torch.tensor([1, 3]),
              "frame_id": "000001", "calib": None},
             {"points": torch.zeros(5, 4), "gt_boxes": torch.zeros(0, 7), "gt_labels": torch.zeros(0, dtype=torch.long),
              "frame_id": "000002", "calib": None}]
    out = collate_kitti(batch)
    assert out["points"].shape == (8, 5) and out["points"][:3, 0].tolist() == [0, 0, 0]
    assert out["points"][3:, 0].tolist() == [1] * 5
    assert out["gt_boxes"].shape == (2, 2, 7) and out["gt_labels"].tolist() == [[1, 3], [0, 0]]
    assert (out["gt_boxes"][1] == 0).all() and out["frame_id"] == ["000001", "000002"]


# ---------------------------------------------------------------------------- loaders

def _batches(loader):
    return [b for b in loader]


def test_seeded_loader_with_workers_is_reproducible(smoke):
    ds = build_dataset("cityscapes", smoke["cityscapes"], "train", train=True, size=(32, 64))
    runs = [_batches(build_loader(ds, "cityscapes", batch_size=2, shuffle=True, num_workers=2, seed=s))
            for s in (7, 7, 8)]
    assert len(runs[0]) == 2
    for (xa, ma), (xb, mb) in zip(runs[0], runs[1]):
        assert torch.equal(xa, xb) and torch.equal(ma, mb)
    assert any(not torch.equal(xa, xc) for (xa, _), (xc, _) in zip(runs[0], runs[2]))
    kitti = build_dataset("kitti", smoke["kitti"], "train", train=True, point_cloud_range=SYNTHETIC_RANGE)
    k1, k2 = (_batches(build_loader(kitti, "kitti", batch_size=2, shuffle=True, num_workers=2, seed=1))
              for _ in range(2))
    assert all(torch.equal(a["points"], b["points"]) and a["frame_id"] == b["frame_id"] for a, b in zip(k1, k2))


def test_main_process_augmentation_is_seeded(smoke):
    a = build_dataset("coco", smoke["coco"], "train", train=True, size=(64, 48), seed=4)
    b = build_dataset("coco", smoke["coco"], "train", train=True, size=(64, 48), seed=4)
    c = build_dataset("coco", smoke["coco"], "train", train=True, size=(64, 48), seed=5)
    xa, xb, xc = ([d[i]["image"] for i in range(3)] for d in (a, b, c))
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))
    assert not all(torch.equal(p, q) for p, q in zip(xa, xc))


def test_coco_targets_decoded_with_meta_score_high_ap(smoke):
    """Heatmap targets decoded (argmax + quarter-pixel shift) and mapped back with the sample's
    center/scale reproduce the annotations: real COCOeval AP close to 1 at 256x192."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    ds = build_dataset("coco", smoke["coco"], "val", train=False)
    results = []
    for i in range(len(ds)):
        s = ds[i]
        hm = s["heatmaps"].numpy()
        flat = hm.reshape(17, -1)
        ys, xs = np.divmod(flat.argmax(1), 48)
        pts = np.stack([xs, ys], 1).astype(float)
        for j in range(17):
            x, y = xs[j], ys[j]
            if 0 < x < 47:
                pts[j, 0] += 0.25 * np.sign(hm[j, y, x + 1] - hm[j, y, x - 1])
            if 0 < y < 63:
                pts[j, 1] += 0.25 * np.sign(hm[j, y + 1, x] - hm[j, y - 1, x])
        inv = get_affine_transform(s["center"].numpy(), s["scale"].numpy(), 0, (192, 256), inv=True)
        kp = np.concatenate([affine_transform(pts * 4, inv), flat.max(1, keepdims=True)], 1)
        results.append({"image_id": int(s["image_id"]), "category_id": 1, "keypoints": kp.ravel().tolist(),
                        "score": float(s["score"])})
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(results), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] > 0.9
