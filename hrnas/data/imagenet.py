"""ImageNet-1k in the PyTorch-example layout (docs/datasets.md §3.1).

`ROOT/train/<wnid>/*.JPEG`; `ROOT/val/<wnid>/*.JPEG` (after valprep.sh) or a flat `ROOT/val/*.JPEG`
with `LOC_val_solution.csv` (Kaggle) or `val_labels.txt` (`<file name> <wnid or class index>` per line)
in ROOT or ROOT/val. Class index = position of the wnid in sorted order (ImageFolder semantics); the
class list comes from `train/`, else `LOC_synset_mapping.txt`, else the val class folders.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from hrnas.data.common import AugmentationRNG, read_rgb, require_dir
from hrnas.errors import UserError

LAYOUT = ("ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (or a flat ROOT/val/*.JPEG with "
          "LOC_val_solution.csv or val_labels.txt)")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_classes(root: Path) -> list[str]:
    """Sorted wnids: from train/ class folders, LOC_synset_mapping.txt, or val/ class folders."""
    if (root / "train").is_dir() and _class_dirs(root / "train"):
        return _class_dirs(root / "train")
    mapping = root / "LOC_synset_mapping.txt"
    if mapping.is_file():
        wnids = [line.split()[0] for line in mapping.read_text().splitlines() if line.strip()]
        return sorted(wnids)
    if (root / "val").is_dir() and _class_dirs(root / "val"):
        return _class_dirs(root / "val")
    raise UserError(f"ImageNet: cannot find the class list under {root}: expected train/<wnid>/ folders "
                    "or LOC_synset_mapping.txt")


def _flat_val_labels(root: Path, val_dir: Path, index: dict[str, int]) -> dict[str, int]:
    """Image stem -> class index for a flat val folder."""
    for folder in (root, val_dir):
        sol = folder / "LOC_val_solution.csv"
        if sol.is_file():
            labels = {}
            with open(sol, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        labels[row["ImageId"]] = index[row["PredictionString"].split()[0]]
                    except (KeyError, IndexError):
                        raise UserError(f"ImageNet: {sol} line for {row.get('ImageId')!r} has no known wnid; "
                                        "expected columns ImageId,PredictionString") from None
            return labels
        txt = folder / "val_labels.txt"
        if txt.is_file():
            labels = {}
            for n, line in enumerate(txt.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                label = parts[-1] if len(parts) == 2 else None
                value = index.get(label) if label is not None else None
                if value is None and label is not None and label.isdigit() and int(label) < len(index):
                    value = int(label)
                if value is None:
                    raise UserError(f"ImageNet: {txt} line {n} is not '<file name> <wnid or class index>': {line!r}")
                labels[Path(parts[0]).stem] = value
            return labels
    raise UserError(f"ImageNet: flat val folder {val_dir} needs LOC_val_solution.csv or val_labels.txt "
                    f"in {root} or {val_dir}")


class ImageNetDataset(torch.utils.data.Dataset):
    """Samples `(image (3, H, W) float32 normalised, label int)`."""

    def __init__(self, root, split: str, transform, seed: int = 0):
        if split not in ("train", "val"):
            raise UserError(f"ImageNet split {split!r} is not one of train, val")
        root = require_dir(Path(root), "ImageNet", LAYOUT)
        folder = require_dir(root / split, "ImageNet", LAYOUT)
        self.classes = find_classes(root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.num_classes = len(self.classes)
        samples: list[tuple[Path, int]] = []
        sub = _class_dirs(folder)
        if sub:
            for wnid in sub:
                if wnid not in self.class_to_idx:
                    raise UserError(f"ImageNet: class folder {folder / wnid} is not in the class list "
                                    f"({len(self.classes)} classes from {root})")
                samples += [(p, self.class_to_idx[wnid]) for p in _images(folder / wnid)]
        elif split == "val":
            labels = _flat_val_labels(root, folder, self.class_to_idx)
            for p in _images(folder):
                if p.stem not in labels:
                    raise UserError(f"ImageNet: no label for {p} in the val label file")
                samples.append((p, labels[p.stem]))
        if not samples:
            raise UserError(f"ImageNet: no images under {folder}; expected layout {LAYOUT}")
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.transform = transform
        self.rng = AugmentationRNG(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        return self.transform(read_rgb(path), self.rng.get()), target
