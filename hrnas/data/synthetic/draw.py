"""Drawing helpers shared by the generators: per-sample RNGs, smooth noise, polygon rasterising, saving."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def sample_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """Independent, reproducible RNG for sample `index` of `stream` (e.g. 'train')."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), index])


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int = 16) -> np.ndarray:
    """Low-frequency noise in [-1, 1] of shape (h, w): random grid upsampled bilinearly."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR))


def rasterize(polygons, h: int, w: int, values) -> np.ndarray:
    """Draw integer-valued polygons in order (later on top) into an int32 (h, w) map (0 = none)."""
    canvas = Image.new("I", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, value in zip(polygons, values):
        draw.polygon([tuple(p) for p in poly], fill=int(value), outline=int(value))
    return np.asarray(canvas, dtype=np.int32)


def regular_polygon(cx, cy, rx, ry, n=16, phase=0.0):
    """n-gon approximating an ellipse."""
    a = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def int_polygon(poly) -> list[list[int]]:
    """Round polygon vertices to integers (Cityscapes polygons are integers); drop repeats."""
    out: list[list[int]] = []
    for x, y in np.asarray(poly, dtype=np.float64):
        p = [int(round(x)), int(round(y))]
        if not out or out[-1] != p:
            out.append(p)
    return out


def save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def save_jpeg(array: np.ndarray, path: Path, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=quality)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
