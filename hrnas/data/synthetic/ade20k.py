"""Synthetic ADE20K (ADEChallengeData2016 layout): painted street and indoor scenes (§4.3)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hrnas.data.labels import ADE20K_CLASSES, ade20k_id
from hrnas.data.synthetic.draw import sample_rng, save_jpeg, save_png
from hrnas.data.synthetic.scenes import paint_indoor, paint_street, render

DESCRIPTION = """
Half street scenes, half indoor rooms (walls, floor, ceiling, window, curtain, door, painting, rug,
table, chair, bed, cabinet, sofa, lamp, plant, person), written as
`ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg` (JPEG) with
`annotations/.../*.png` (L; 0 = other, 1..150 = ADE20K-150 classes), `objectInfo150.txt` (pixel ratio
and image counts measured on this data) and `sceneCategories.txt`. Only the classes painted occur;
models keep all 150 outputs (mIoU averages the classes present, as mmseg does).
"""
VERSION = 1  # bump when the generated data changes: cached copies are regenerated

PRESETS = {"smoke": {"size": (160, 120), "train": 4, "val": 2},
           "tiny": {"size": (320, 240), "train": 200, "val": 40}}
# painter vocabulary -> ADE20K annotation value (0 = other)
_STREET = {"sky": "sky", "building": "building", "vegetation": "tree", "terrain": "grass", "sidewalk": "sidewalk",
           "road": "road", "wall": "wall", "fence": "fence", "pole": "pole", "traffic sign": "signboard",
           "traffic light": "traffic light", "car": "car", "truck": "truck", "bus": "bus", "person": "person",
           "rider": "person", "bicycle": "bicycle"}
_INDOOR = {"wall": "wall", "floor": "floor", "ceiling": "ceiling", "windowpane": "windowpane", "curtain": "curtain",
           "door": "door", "painting": "painting", "rug": "rug", "table": "table", "chair": "chair", "bed": "bed",
           "cabinet": "cabinet", "sofa": "sofa", "lamp": "lamp", "plant": "plant", "person": "person"}
ADE_VALUE = {kind: {k: ade20k_id(v) for k, v in table.items()} for kind, table in
             (("street", _STREET), ("indoor", _INDOOR))}


def num_samples(preset: str) -> int:
    return PRESETS[preset]["train"] + PRESETS[preset]["val"]


def generate(out: Path, preset: str, seed: int, tick=lambda: None) -> dict:
    """Write the dataset into `out`; `tick()` is called once per sample (progress)."""
    cfg = PRESETS[preset]
    width, height = cfg["size"]
    base = out / "ADEChallengeData2016"
    pixels = np.zeros(151, np.int64)
    images_with = {"training": np.zeros(151, np.int64), "validation": np.zeros(151, np.int64)}
    scenes = []
    for split, sub, prefix in (("train", "training", "ADE_train"), ("val", "validation", "ADE_val")):
        for i in range(cfg[split]):
            tick()
            rng = sample_rng(seed, f"ade20k-{split}", i)
            indoor = i % 2 == 1
            scene = (paint_indoor if indoor else paint_street)(rng, width, height)
            obj, rgb = render(scene, rng)
            table = ADE_VALUE[scene.kind]
            values = np.array([0] + [table.get(s.cls, 0) for s in scene.shapes], dtype=np.uint8)
            ann = values[obj]
            stem = f"{prefix}_{i + 1:08d}"
            save_jpeg(rgb, base / "images" / sub / f"{stem}.jpg")
            save_png(ann, base / "annotations" / sub / f"{stem}.png")
            scenes.append(f"{stem} {'living_room' if indoor else 'street'}\n")
            counts = np.bincount(ann.ravel(), minlength=151)
            pixels += counts
            images_with[sub] += counts > 0
    rows = ["Idx\tRatio\tTrain\tVal\tName\n"]
    total = max(1, pixels.sum())
    for k, name in enumerate(ADE20K_CLASSES, 1):
        rows.append(f"{k}\t{pixels[k] / total:.4f}\t{images_with['training'][k]}\t"
                    f"{images_with['validation'][k]}\t{name.strip()}\n")
    (base / "objectInfo150.txt").write_text("".join(rows))
    (base / "sceneCategories.txt").write_text("".join(scenes))
    present = [ADE20K_CLASSES[k - 1].strip() for k in range(1, 151) if pixels[k] > 0]
    return {"images": f"training {cfg['train']}, validation {cfg['val']} ({width}x{height} px, half street, half indoor)",
            "classes present": f"{len(present)} of 150: {', '.join(present)}",
            "unlabelled (0 = other) pixels": f"{pixels[0] / total:.1%}"}
