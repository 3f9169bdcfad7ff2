"""Cityscapes fine annotations (docs/datasets.md §3.2, docs/metrics-and-peers.md §2.3).

Layout: `ROOT/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png` with
`ROOT/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png` (preferred, as HR-NAS reads) or
`<stem>_gtFine_labelIds.png` mapped to the 19 train ids with the official table (others -> 255).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from hrnas.io import atomic_write_bytes
from hrnas.data.common import check_label_values, read_label_png, require_dir
from hrnas.data.labels import (CITYSCAPES_CLASSES, CITYSCAPES_NUM_CLASSES, CITYSCAPES_VALID_IDS,
                               CITYSCAPES_VALID_TRAIN_IDS, cityscapes_id_to_train_id_lut)
from hrnas.data.segmentation import SegmentationDataset
from hrnas.errors import UserError

LAYOUT = ("ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png + "
          "ROOT/gtFine/<split>/<city>/*_gtFine_labelIds.png (or *_gtFine_labelTrainIds.png)")
SPLITS = ("train", "val", "test")
_LUT = cityscapes_id_to_train_id_lut()


def label_ids_to_train_ids(label_ids: np.ndarray, path: Path) -> np.ndarray:
    """Map a labelIds array to train ids; ids outside the official table raise UserError naming `path`."""
    check_label_values(label_ids, CITYSCAPES_VALID_IDS, path, "Cityscapes label table (ids 0-33)")
    return _LUT[label_ids]


class CityscapesDataset(SegmentationDataset):
    num_classes = CITYSCAPES_NUM_CLASSES
    classes = CITYSCAPES_CLASSES

    def __init__(self, root, split: str, transform, seed: int = 0):
        if split not in SPLITS:
            raise UserError(f"Cityscapes split {split!r} is not one of {', '.join(SPLITS)}")
        root = Path(root)
        img_dir = require_dir(root / "leftImg8bit" / split, "Cityscapes", LAYOUT)
        gt_dir = require_dir(root / "gtFine" / split, "Cityscapes", LAYOUT)
        files = []
        for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            base = gt_dir / img.parent.name / stem
            train_ids = base.with_name(stem + "_gtFine_labelTrainIds.png")
            label_ids = base.with_name(stem + "_gtFine_labelIds.png")
            if not (train_ids.is_file() or label_ids.is_file()):
                raise UserError(f"Cityscapes: no label for {img}: expected {label_ids} or {train_ids}")
            files.append((img, train_ids if train_ids.is_file() else label_ids))
        if not files:
            raise UserError(f"Cityscapes: no *_leftImg8bit.png images under {img_dir}; expected layout {LAYOUT}")
        super().__init__(files, transform, seed)

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if path.name.endswith("_labelTrainIds.png"):
            check_label_values(raw, CITYSCAPES_VALID_TRAIN_IDS, path, "Cityscapes train ids (0-18, 255)")
            return raw.astype(np.uint8)
        return label_ids_to_train_ids(raw, path)


def write_train_id_files(root, overwrite: bool = False) -> int:
    """Write `*_gtFine_labelTrainIds.png` next to every `*_gtFine_labelIds.png` under ROOT/gtFine
    (what cityscapesscripts' createTrainIdLabelImgs produces). Returns the number of files written."""
    gt = require_dir(Path(root) / "gtFine", "Cityscapes", LAYOUT)
    count = 0
    for src in sorted(gt.glob("*/*/*_gtFine_labelIds.png")):
        dst = src.with_name(src.name.replace("_labelIds.png", "_labelTrainIds.png"))
        if dst.exists() and not overwrite:
            continue
        buf = io.BytesIO()
        Image.fromarray(label_ids_to_train_ids(read_label_png(src), src)).save(buf, format="PNG")
        atomic_write_bytes(dst, buf.getvalue())
        count += 1
    if count == 0 and not any(gt.glob("*/*/*_gtFine_labelIds.png")):
        raise UserError(f"Cityscapes: no *_gtFine_labelIds.png under {gt}; expected layout {LAYOUT}")
    return count
