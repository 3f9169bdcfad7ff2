"""Shared helpers of the data package: checked file reading, atomic writes, augmentation RNG.

Every reader here turns a missing, corrupt or truncated file into `hrnas.errors.UserError` with a
one-line message naming the file, so the CLI can report it (exit status 2).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hrnas.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def one_line(text: object) -> str:
    """Collapse a message onto one line (the CLI prints user errors as one line)."""
    return " ".join(str(text).split())


def require_dir(path: Path, what: str, layout: str) -> Path:
    """Return `path` if it is a directory, else raise UserError naming it and the expected layout."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{what}: directory {path} not found; expected layout {layout}")
    return path


def require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what}: file {path} not found")
    return path


def read_rgb(path: Path) -> Image.Image:
    """Decode an image file fully and convert it to RGB (ImageNet has grayscale/CMYK JPEGs)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image file {path} not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {one_line(e)}") from None


def read_label_png(path: Path) -> np.ndarray:
    """Read a label PNG without any colour conversion (mode L, P, I or I;16) as a 2-D integer array."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16"):
                raise UserError(f"label image {path} has mode {img.mode}; expected a single-channel "
                                "integer PNG (mode L, P, I or I;16)")
            return np.asarray(img)
    except FileNotFoundError:
        raise UserError(f"label file {path} not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"cannot read label image {path}: {one_line(e)}") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header only."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise UserError(f"image file {path} not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {one_line(e)}") from None


def check_label_values(values: np.ndarray, allowed: np.ndarray, path: Path, table: str) -> None:
    """Raise UserError naming the file and the offending ids if `values` has ids outside `allowed`."""
    present = np.unique(values)
    bad = present[~np.isin(present, allowed)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise UserError(f"label map {path} has ids outside the {table}: {shown}")


# ---------------------------------------------------------------------------- augmentation RNG

class AugmentationRNG:
    """A private torch.Generator for data augmentation.

    In the main process it is seeded from `seed` once, so `num_workers=0` iteration is reproducible
    and independent of the model's use of the global RNG. In a DataLoader worker it is (re)seeded
    from the worker's `torch.initial_seed()` (set by the DataLoader from its `generator`, new every
    epoch) mixed with `seed`, so seeded loaders give the same batches for any run.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._gen: torch.Generator | None = None
        self._key: tuple | None = None

    def get(self) -> torch.Generator:
        in_worker = torch.utils.data.get_worker_info() is not None
        key = (os.getpid(), torch.initial_seed() if in_worker else None)
        if key != self._key:
            base = torch.initial_seed() if in_worker else 0
            self._gen = torch.Generator().manual_seed((base + self.seed * 0x9E3779B97F4A7C15) % (2**63))
            self._key = key
        return self._gen

    def __getstate__(self):  # generators are per process; rebuild after pickling into workers
        return {"seed": self.seed, "_gen": None, "_key": None}


def uniform(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return float(low + (high - low) * torch.rand((), generator=g))


def normal(g: torch.Generator, mean: float = 0.0, std: float = 1.0) -> float:
    return float(mean + std * torch.randn((), generator=g))


def randint(g: torch.Generator, low: int, high: int) -> int:
    """Integer in [low, high)."""
    return int(torch.randint(low, high, (), generator=g))
