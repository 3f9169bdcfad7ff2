"""Synthetic ImageNet: drawn shape classes in the ImageNet folder layout (§4.1)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hrnas.data.synthetic.draw import regular_polygon, sample_rng, save_jpeg, smooth_noise, to_uint8

DESCRIPTION = """
Ten shape classes (circle, square, triangle, star, ring, cross, stripes, checker, ellipse, diamond)
drawn dark on a lighter textured background, with random colours, size, position, rotation and noise,
so the class is only in the shape. Made-up wnids n90000000..n90000009 (outside the real 1k set). Layout as after
valprep.sh: `train/<wnid>/<wnid>_<i>.JPEG`, `val/<wnid>/ILSVRC2012_val_%08d.JPEG`, plus the Kaggle
metadata `LOC_synset_mapping.txt` and `LOC_val_solution.csv` (which also serve a flat val folder).
Image sizes vary (width and height 64-96 px) like real ImageNet photos.
"""
VERSION = 3  # 3: tiny val 100 per class (was 30: one image moved top-1 by 0.33 %); 2: dark shapes on lighter
#    backgrounds, larger (was: random contrast polarity)

CLASSES = ("circle", "square", "triangle", "star", "ring", "cross", "stripes", "checker", "ellipse", "diamond")
WNIDS = tuple(f"n9000000{i}" for i in range(len(CLASSES)))
PRESETS = {"smoke": {"train": 3, "val": 1, "size": (64, 96)},
           "tiny": {"train": 150, "val": 100, "size": (64, 96)}}


def _shape_polygons(name: str, cx, cy, r, angle, rng):
    """Polygons (list of vertex arrays, with a flag: True = fill with the shape colour, False = hole)."""
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def place(pts):
        return np.asarray(pts) @ rot.T + (cx, cy)

    if name == "circle":
        return [(regular_polygon(cx, cy, r, r, 32), True)]
    if name == "ellipse":
        return [(place(regular_polygon(0, 0, r, r * rng.uniform(0.35, 0.6), 32)), True)]
    if name == "ring":
        return [(regular_polygon(cx, cy, r, r, 32), True), (regular_polygon(cx, cy, r * 0.55, r * 0.55, 32), False)]
    if name == "square":
        q = 0.8 * r
        return [(place([(-q, -q), (q, -q), (q, q), (-q, q)]), True)]
    if name == "diamond":
        return [(place([(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)]), True)]
    if name == "triangle":
        return [(place(regular_polygon(0, 0, r, r, 3, -np.pi / 2)), True)]
    if name == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        return [(place(np.stack([rad * np.cos(a), rad * np.sin(a)], 1)), True)]
    if name == "cross":
        t = 0.3 * r
        return [(place([(-r, -t), (r, -t), (r, t), (-r, t)]), True), (place([(-t, -r), (t, -r), (t, r), (-t, r)]), True)]
    if name == "stripes":
        n, polys = 4, []
        for k in range(n):
            y0 = -r + 2 * r * k / n
            polys.append((place([(-r, y0), (r, y0), (r, y0 + r / n), (-r, y0 + r / n)]), True))
        return polys
    # checker
    polys, n = [], 4
    for i in range(n):
        for j in range(n):
            if (i + j) % 2 == 0:
                x0, y0 = -r + 2 * r * i / n, -r + 2 * r * j / n
                polys.append((place([(x0, y0), (x0 + 2 * r / n, y0), (x0 + 2 * r / n, y0 + 2 * r / n),
                                     (x0, y0 + 2 * r / n)]), True))
    return polys


def draw_sample(rng: np.random.Generator, cls: int, size_range) -> np.ndarray:
    w, h = (int(rng.integers(size_range[0], size_range[1] + 1)) for _ in range(2))
    # a dark object on a lighter background, both of random colour: with the contrast polarity random too,
    # the small CNNs here (MobileNetV2, the super network) stay at chance for 300+ steps
    bg = rng.uniform(140, 255, 3)
    fg = rng.uniform(0, 100, 3)
    img = bg * (1 + 0.25 * smooth_noise(rng, h, w, 10)[..., None])
    canvas = Image.fromarray(to_uint8(img))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(0, 4)):          # small distractor blobs
        x, y, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 6)
        draw.ellipse([x - s, y - s, x + s, y + s], fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
    r = min(w, h) * rng.uniform(0.25, 0.42)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    for poly, solid in _shape_polygons(CLASSES[cls], cx, cy, r, rng.uniform(0, 2 * np.pi), rng):
        draw.polygon([tuple(p) for p in poly], fill=tuple(int(c) for c in (fg if solid else bg)))
    arr = np.asarray(canvas, np.float32) * rng.uniform(0.8, 1.2) + rng.normal(0, 6, (h, w, 3))
    return to_uint8(arr)


def num_samples(preset: str) -> int:
    return len(CLASSES) * (PRESETS[preset]["train"] + PRESETS[preset]["val"])


def generate(out: Path, preset: str, seed: int, tick=lambda: None) -> dict:
    """Write the dataset into `out`; `tick()` is called once per image (progress)."""
    cfg = PRESETS[preset]
    solution = io.StringIO()
    writer = csv.writer(solution, lineterminator="\n")
    writer.writerow(["ImageId", "PredictionString"])
    val_index = 1
    for c, wnid in enumerate(WNIDS):
        for i in range(cfg["train"]):
            tick()
            rng = sample_rng(seed, f"imagenet-train-{c}", i)
            save_jpeg(draw_sample(rng, c, cfg["size"]), out / "train" / wnid / f"{wnid}_{i}.JPEG")
        for i in range(cfg["val"]):
            tick()
            rng = sample_rng(seed, f"imagenet-val-{c}", i)
            arr = draw_sample(rng, c, cfg["size"])
            name = f"ILSVRC2012_val_{val_index:08d}"
            save_jpeg(arr, out / "val" / wnid / f"{name}.JPEG")
            writer.writerow([name, f"{wnid} 0 0 {arr.shape[1] - 1} {arr.shape[0] - 1}"])
            val_index += 1
    (out / "LOC_val_solution.csv").write_text(solution.getvalue())
    (out / "LOC_synset_mapping.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(WNIDS, CLASSES)))
    return {"classes": ", ".join(f"{w} {n}" for w, n in zip(WNIDS, CLASSES)),
            "images": f"train {cfg['train']} per class, val {cfg['val']} per class "
                      f"({cfg['size'][0]}-{cfg['size'][1]} px sides)"}
