"""Synthetic Cityscapes: painted street scenes with every label file Cityscapes ships (§4.2)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hrnas.data.labels import CITYSCAPES_BY_NAME, CITYSCAPES_LABELS, cityscapes_id_to_train_id_lut
from hrnas.data.synthetic.draw import sample_rng, save_png
from hrnas.data.synthetic.scenes import paint_street, render

DESCRIPTION = """
Street scenes painted in one-point perspective: sky, skyline and facades (building, vegetation),
terrain, sidewalks and road (one paving, told apart only by their side of the light kerb stripe),
walls/fences, poles with traffic signs/lights, depth-sorted cars, trucks and buses (painted like
facades: told from buildings by standing on the road), persons and cyclists (bicycle + rider), an
occasional ego-vehicle hood (id 1) and street furniture ('static', id 4), both ignored in training.
Files per frame, as in the real gtFine release:
`leftImg8bit/<split>/<city>/<city>_<seq>_000019_leftImg8bit.png` and `gtFine/<split>/<city>/...`
`_gtFine_labelIds.png` (L, ids 0-33), `_gtFine_labelTrainIds.png` (L, 0-18, 255 ignore),
`_gtFine_instanceIds.png` (16-bit, id*1000+k for things), `_gtFine_color.png` (RGBA) and
`_gtFine_polygons.json` (integer polygons in drawing order; rendering them gives the label PNGs).
"""
VERSION = 2  # bump when the generated data changes: cached copies are regenerated

PRESETS = {"smoke": {"size": (256, 128), "train": 4, "val": 2},
           "tiny": {"size": (512, 256), "train": 200, "val": 40}}
CITIES = {"train": ("aachen", "bochum", "bremen", "cologne"), "val": ("frankfurt", "lindau", "munster")}
_PALETTE = np.zeros((256, 3), np.uint8)
for _lab in CITYSCAPES_LABELS:
    _PALETTE[_lab.id] = _lab.color
_LUT = cityscapes_id_to_train_id_lut()


def write_frame(scene, rng, stem: str, img_dir: Path, gt_dir: Path) -> dict[int, int]:
    """Write the image and all label files of one frame; returns pixel counts per label id."""
    obj, rgb = render(scene, rng)
    labels = [CITYSCAPES_BY_NAME[s.cls] for s in scene.shapes]
    ids = np.array([0] + [lab.id for lab in labels], dtype=np.int32)
    counters: dict[int, int] = {}
    inst = [0]
    for lab in labels:
        if lab.has_instances:
            inst.append(lab.id * 1000 + counters.get(lab.id, 0))
            counters[lab.id] = counters.get(lab.id, 0) + 1
        else:
            inst.append(lab.id)
    label_ids = ids[obj].astype(np.uint8)
    save_png(rgb, img_dir / f"{stem}_leftImg8bit.png")
    save_png(label_ids, gt_dir / f"{stem}_gtFine_labelIds.png")
    save_png(_LUT[label_ids], gt_dir / f"{stem}_gtFine_labelTrainIds.png")
    save_png(np.array(inst, dtype=np.uint16)[obj], gt_dir / f"{stem}_gtFine_instanceIds.png")
    color = np.concatenate([_PALETTE[label_ids], np.full(label_ids.shape + (1,), 255, np.uint8)], axis=2)
    save_png(color, gt_dir / f"{stem}_gtFine_color.png")
    polygons = {"imgHeight": scene.height, "imgWidth": scene.width,
                "objects": [{"id": k, "label": s.cls, "polygon": s.polygon, "deleted": 0, "verified": 0,
                             "user": "hrnas-synthetic"} for k, s in enumerate(scene.shapes)]}
    (gt_dir / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons) + "\n")
    values, counts = np.unique(label_ids, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def num_samples(preset: str) -> int:
    return PRESETS[preset]["train"] + PRESETS[preset]["val"]


def generate(out: Path, preset: str, seed: int, tick=lambda: None) -> dict:
    """Write the dataset into `out`; `tick()` is called once per sample (progress)."""
    cfg = PRESETS[preset]
    width, height = cfg["size"]
    pixels = np.zeros(256, np.int64)
    for split in ("train", "val"):
        cities = CITIES[split]
        for i in range(cfg[split]):
            tick()
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_000019"
            rng = sample_rng(seed, f"cityscapes-{split}", i)
            counts = write_frame(paint_street(rng, width, height), rng, stem,
                                 out / "leftImg8bit" / split / city, out / "gtFine" / split / city)
            for k, v in counts.items():
                pixels[k] += v
    present = [lab.name for lab in CITYSCAPES_LABELS if pixels[lab.id] > 0 and lab.train_id != 255]
    return {"frames": f"train {cfg['train']}, val {cfg['val']} ({width}x{height} px)",
            "cities": f"train {', '.join(CITIES['train'])}; val {', '.join(CITIES['val'])}",
            "train classes present": f"{len(present)} of 19: {', '.join(present)}"}
