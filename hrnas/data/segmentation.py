"""Common base of the Cityscapes and ADE20K loaders: (image file, label file) pairs -> normalised
image (3, H, W) float32 and mask (H, W) int64 with 255 = ignore."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hrnas.data.common import AugmentationRNG, read_label_png, read_rgb
from hrnas.errors import UserError


class SegmentationDataset(torch.utils.data.Dataset):
    """Subclasses set `self.files` (list of (image, label) paths) and implement `decode_label`."""

    num_classes: int
    classes: tuple[str, ...]

    def __init__(self, files: list[tuple[Path, Path]], transform, seed: int = 0):
        self.files = files
        self.transform = transform
        self.rng = AugmentationRNG(seed)

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        raise NotImplementedError

    def load_label(self, index: int) -> np.ndarray:
        """Train-id mask (H, W) uint8 of sample `index`, 255 = ignore, before any transform."""
        path = self.files[index][1]
        return self.decode_label(read_label_png(path), path)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        img_path, label_path = self.files[index]
        img = read_rgb(img_path)
        mask = self.load_label(index)
        if mask.shape != (img.height, img.width):
            raise UserError(f"label {label_path} is {mask.shape[1]}x{mask.shape[0]} but image {img_path} "
                            f"is {img.width}x{img.height}")
        return self.transform(img, mask, self.rng.get())
