"""Data: loaders for the real on-disk layouts of the five benchmarks, the authors' transforms, and
procedural miniature datasets written in the same layouts (docs/datasets.md).

Entry points: `build_dataset`, `collate_fn`, `build_loader`, `make_dataset`, `ensure_dataset`,
`default_root`, `NUM_CLASSES`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from hrnas.data import transforms as T
from hrnas.data.labels import ADE20K_NUM_CLASSES, CITYSCAPES_NUM_CLASSES
from hrnas.data.loader import build_loader, collate_fn
from hrnas.data.synthetic import DATASETS, PRESETS, default_root, ensure_dataset, make_dataset
from hrnas import PAPER_SIZES, TASKS
from hrnas.errors import UserError

# Of the real benchmarks (coco: keypoints; kitti: Car, Pedestrian, Cyclist). A built dataset's own
# count is `dataset.num_classes` (the synthetic ImageNet has 10 classes).
NUM_CLASSES = {"imagenet": 1000, "cityscapes": CITYSCAPES_NUM_CLASSES, "ade20k": ADE20K_NUM_CLASSES,
               "coco": 17, "kitti": 3}

__all__ = ["TASKS", "NUM_CLASSES", "DATASETS", "PRESETS", "build_dataset", "collate_fn",
           "build_loader", "make_dataset", "ensure_dataset", "default_root"]


# options build_dataset accepts per task (besides size and seed)
OPTIONS = {
    "imagenet": {"crop_scale", "flip_prob", "randaugment"},
    "cityscapes": {"img_scale", "ratio_range", "cat_max_ratio", "flip_prob", "photometric"},
    "ade20k": {"img_scale", "ratio_range", "cat_max_ratio", "flip_prob", "photometric", "reduce_zero_label"},
    "coco": {"sigma", "heatmap_stride", "detections", "det_score_thr", "flip_prob", "half_body_prob",
             "scale_factor", "rot_factor", "rot_prob"},
    "kitti": {"point_cloud_range", "fov_only", "flip_prob", "rot_range", "scale_range", "translate_std"},
}


def _size(task: str, size):
    if size is None:
        return PAPER_SIZES[task]
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise UserError(f"size must be (H, W), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise UserError(f"size must be positive, got {size!r}")
    return h, w


def _pick(options: dict, keys) -> dict:
    return {k: options[k] for k in keys if k in options}


def build_dataset(task: str, root, split: str, *, train: bool, size=None, seed: int = 0, **options):
    """Dataset of `task` in `root` (real layout), split `split`.

    `train=True` gives the authors' training augmentation, else deterministic evaluation transforms.
    `size` = (H, W) of the network input (crop); kitti ignores it. `seed` seeds the augmentation RNG
    (see `hrnas.data.common.AugmentationRNG`). Options per task:
      imagenet: crop_scale (area range of the random-resized crop, default (0.08, 1)), flip_prob,
        randaugment ((N, M) or None).
      cityscapes / ade20k: img_scale (long, short) [cityscapes 2x the crop, ade20k (4W, H): the authors'
        (2048, 1024) / (2048, 512) at the default sizes], ratio_range, cat_max_ratio, flip_prob,
        photometric; ade20k also reduce_zero_label. Evaluation samples are (image resized to img_scale,
        label at its original size).
      coco: sigma, heatmap_stride, detections (results JSON for evaluation boxes), det_score_thr,
        flip_prob, half_body_prob, scale_factor, rot_factor, rot_prob.
      kitti: point_cloud_range, fov_only, flip_prob, rot_range, scale_range, translate_std.
    """
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        layout = importlib.import_module(f"hrnas.data.{task}").LAYOUT
        raise UserError(f"{task} data root {root} is not a directory; expected layout {layout}")
    unknown = sorted(set(options) - OPTIONS[task])
    if unknown:
        raise UserError(f"build_dataset({task!r}): unknown option(s) {', '.join(unknown)}; "
                        f"allowed: {', '.join(sorted(OPTIONS[task]))}")
    return _BUILDERS[task](task, root, split, train, size, seed, options)


def _imagenet(task, root, split, train, size, seed, options):
    from hrnas.data.imagenet import ImageNetDataset
    hw = _size(task, size)
    if train:
        tf = T.ClsTrainTransform(hw, scale=options.get("crop_scale", (0.08, 1.0)),
                                 flip_prob=options.get("flip_prob", 0.5), randaugment=options.get("randaugment"))
    else:
        tf = T.ClsEvalTransform(hw)
    return ImageNetDataset(root, split, tf, seed=seed)


def _segmentation(task, root, split, train, size, seed, options):
    h, w = _size(task, size)
    img_scale = tuple(options.get("img_scale", (2 * w, 2 * h) if task == "cityscapes" else (4 * w, h)))
    if train:
        tf = T.SegTrainTransform((h, w), img_scale,
                                 **_pick(options, ("ratio_range", "cat_max_ratio", "flip_prob", "photometric")))
    else:
        tf = T.SegEvalTransform(img_scale)
    if task == "cityscapes":
        from hrnas.data.cityscapes import CityscapesDataset
        return CityscapesDataset(root, split, tf, seed=seed)
    from hrnas.data.ade20k import ADE20KDataset
    return ADE20KDataset(root, split, tf, reduce_zero_label=options.get("reduce_zero_label", True), seed=seed)


def _coco(task, root, split, train, size, seed, options):
    from hrnas.data.coco import CocoKeypointsDataset
    return CocoKeypointsDataset(root, split, train=train, size=_size(task, size), seed=seed, **options)


def _kitti(task, root, split, train, size, seed, options):  # the BEV grid follows point_cloud_range, not size
    from hrnas.data.kitti import KittiDataset
    aug = T.PointPillarsAugment(**_pick(options, ("flip_prob", "rot_range", "scale_range", "translate_std"))) \
        if train else None
    return KittiDataset(root, split, train=train, augment=aug, seed=seed,
                        **_pick(options, ("point_cloud_range", "fov_only")))


# task -> dataset builder (build_dataset checks the root and the options first)
_BUILDERS = {"imagenet": _imagenet, "cityscapes": _segmentation, "ade20k": _segmentation, "coco": _coco,
             "kitti": _kitti}
