"""Common base of the Cityscapes and ADE20K loaders: (image file, label file) pairs -> normalised
image (3, H, W) float32 and mask (H, W) int64 with 255 = ignore."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hrnas.data.common import AugmentationRNG, read_label_png, read_rgb
from hrnas.errors import UserError


# A split whose files take at most this many bytes on disk (the embedded miniatures: 58 MB for Cityscapes)
# is decoded once and kept in memory: decoding a 512×256 PNG and its label takes 3.8 ms, 30 % of a tiny
# ablation retraining's step on one thread. Larger splits (the real datasets) are read from disk every time.
DECODE_ONCE_MAX_BYTES = 64 << 20


def _small_split(files: list[tuple[Path, Path]]) -> bool:
    total = 0
    for pair in files:
        for f in pair:
            total += f.stat().st_size if f.is_file() else 0
            if total > DECODE_ONCE_MAX_BYTES:
                return False
    return True


class SegmentationDataset(torch.utils.data.Dataset):
    """Subclasses set `self.files` (list of (image, label) paths) and implement `decode_label`."""

    num_classes: int
    classes: tuple[str, ...]

    def __init__(self, files: list[tuple[Path, Path]], transform, seed: int = 0):
        self.files = files
        self.transform = transform
        self.rng = AugmentationRNG(seed)
        self._decoded: dict[int, tuple] | None = {} if _small_split(files) else None

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        raise NotImplementedError

    def load_label(self, index: int) -> np.ndarray:
        """Train-id mask (H, W) uint8 of sample `index`, 255 = ignore, before any transform."""
        path = self.files[index][1]
        return self.decode_label(read_label_png(path), path)

    def __len__(self) -> int:
        return len(self.files)

    def decoded(self, index: int) -> tuple:
        """(RGB image, train-id mask) of sample ``index`` before any transform (the transforms copy them);
        kept after the first read when the split is small (:data:`DECODE_ONCE_MAX_BYTES`)."""
        if self._decoded is not None and index in self._decoded:
            return self._decoded[index]
        img_path, label_path = self.files[index]
        img = read_rgb(img_path)
        mask = self.load_label(index)
        if mask.shape != (img.height, img.width):
            raise UserError(f"label {label_path} is {mask.shape[1]}x{mask.shape[0]} but image {img_path} "
                            f"is {img.width}x{img.height}")
        if self._decoded is not None:
            mask.setflags(write=False)
            self._decoded[index] = (img, mask)
        return (img, mask)

    def __getitem__(self, index: int):
        return self.transform(*self.decoded(index), self.rng.get())
