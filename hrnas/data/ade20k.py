"""ADE20K SceneParsing (ADEChallengeData2016), docs/datasets.md §3.3.

Layout: `ROOT/ADEChallengeData2016/images/{training,validation}/*.jpg` and
`.../annotations/{training,validation}/<same stem>.png` (ROOT may also be the ADEChallengeData2016
folder itself). Annotations: 0 = other, 1..150 = classes; `reduce_zero_label` maps 0 -> 255, k -> k-1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hrnas.data.common import check_label_values, require_dir
from hrnas.data.labels import ADE20K_CLASSES, ADE20K_NUM_CLASSES
from hrnas.data.segmentation import SegmentationDataset
from hrnas.errors import UserError

LAYOUT = ("ROOT/ADEChallengeData2016/images/{training,validation}/*.jpg + "
          "ROOT/ADEChallengeData2016/annotations/{training,validation}/*.png")
SPLIT_DIRS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
_VALID = np.arange(ADE20K_NUM_CLASSES + 1)


def ade_base(root) -> Path:
    """The ADEChallengeData2016 folder: ROOT itself or ROOT/ADEChallengeData2016."""
    root = Path(root)
    nested = root / "ADEChallengeData2016"
    return nested if nested.is_dir() else root


class ADE20KDataset(SegmentationDataset):
    num_classes = ADE20K_NUM_CLASSES
    classes = tuple(c.strip() for c in ADE20K_CLASSES)

    def __init__(self, root, split: str, transform, reduce_zero_label: bool = True, seed: int = 0):
        if split not in SPLIT_DIRS:
            raise UserError(f"ADE20K split {split!r} is not one of train, val (or training, validation)")
        require_dir(Path(root), "ADE20K", LAYOUT)
        base = ade_base(root)
        sub = SPLIT_DIRS[split]
        img_dir = require_dir(base / "images" / sub, "ADE20K", LAYOUT)
        ann_dir = require_dir(base / "annotations" / sub, "ADE20K", LAYOUT)
        files = []
        for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
            ann = ann_dir / (img.stem + ".png")
            if not ann.is_file():
                raise UserError(f"ADE20K: annotation {ann} for image {img} not found")
            files.append((img, ann))
        if not files:
            raise UserError(f"ADE20K: no images under {img_dir}; expected layout {LAYOUT}")
        self.reduce_zero_label = reduce_zero_label
        super().__init__(files, transform, seed)

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        check_label_values(raw, _VALID, path, "ADE20K table (0-150)")
        mask = raw.astype(np.uint8)
        if self.reduce_zero_label:
            mask = (mask.astype(np.int16) - 1).astype(np.uint8)  # 0 -> 255, k -> k-1
        return mask
