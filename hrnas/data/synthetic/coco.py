"""Synthetic COCO person keypoints: articulated stick figures with 17 COCO keypoints (§4.4)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hrnas.data.pose_transforms import COCO_KEYPOINTS, COCO_SKELETON
from hrnas.data.synthetic.draw import regular_polygon, sample_rng, save_jpeg, smooth_noise, to_uint8

DESCRIPTION = """
1-3 articulated stick figures per image on a textured background with clutter: filled torso, thick
limbs (the person's LEFT limbs in warm colours, RIGHT limbs in cool colours, so left/right is
learnable), head disc with eyes; 70 % face the camera (their left is on the image right), 30 % face
away (nose and eyes then unlabelled, v = 0). Visibility: v = 2 where the keypoint's pixel shows this
person (or background), v = 1 where a later-drawn person covers it, v = 0 (0, 0) outside the image.
`bbox`/`area` come from the visible person mask, `segmentation` is the list of body-part polygons.
Layout: `annotations/person_keypoints_{train,val}2017.json` + `images/{train,val}2017/%012d.jpg`.
"""
VERSION = 2  # bump when the generated data changes: cached copies are regenerated
#   2: tiny val 120 images, ~240 persons (was 60, 121: AP over so few persons moved with each one)

PRESETS = {"smoke": {"size": (320, 240), "train": 6, "val": 3},
           "tiny": {"size": (320, 240), "train": 400, "val": 120}}
IMAGE_ID_BASE = {"train": 1, "val": 500001}


def _rot(v, deg):
    a = math.radians(deg)
    return np.array([v[0] * math.cos(a) - v[1] * math.sin(a), v[0] * math.sin(a) + v[1] * math.cos(a)])


def _limb(p, q, r):
    d = np.asarray(q, float) - np.asarray(p, float)
    n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9) * r
    return np.array([p + n, q + n, q - n, p - n])


def pose_keypoints(rng: np.random.Generator, root, height: float, facing: bool):
    """17 keypoints (x, y) of a random upright pose with the hip centre at `root`. `facing` = the
    person faces the camera, so their left side appears on the image right."""
    side = 1.0 if facing else -1.0          # image-x direction of the person's left side
    tilt = rng.normal(0, 6)
    up = _rot((0.0, -1.0), tilt)
    hip_c = np.asarray(root, float)
    neck = hip_c + up * 0.30 * height
    across = _rot((1.0, 0.0), tilt)
    k = np.zeros((17, 2))
    k[5], k[6] = neck + across * side * 0.11 * height, neck - across * side * 0.11 * height
    k[11], k[12] = hip_c + across * side * 0.07 * height, hip_c - across * side * 0.07 * height
    head = neck + up * 0.11 * height
    yaw = rng.uniform(-0.4, 0.4)
    k[0] = head + across * yaw * 0.04 * height + up * -0.005 * height
    for j, s in ((1, 1), (2, -1)):          # eyes
        k[j] = head + across * (side * s * 0.025 + yaw * 0.03) * height + up * 0.015 * height
    for j, s in ((3, 1), (4, -1)):          # ears
        k[j] = head + across * (side * s * 0.06 + yaw * 0.02) * height
    for sh, el, wr, s in ((5, 7, 9, 1), (6, 8, 10, -1)):   # arms: angle from straight down, outward
        a1 = rng.uniform(-25, 160)
        a2 = a1 + rng.uniform(-10, 130)
        out = side * s
        k[el] = k[sh] + _rot((0, 1), tilt - out * a1) * 0.17 * height
        k[wr] = k[el] + _rot((0, 1), tilt - out * a2) * 0.15 * height
    for hp, kn, an, s in ((11, 13, 15, 1), (12, 14, 16, -1)):  # legs
        a1 = rng.uniform(-15, 40)
        a2 = a1 - rng.uniform(0, 50)
        out = side * s
        k[kn] = k[hp] + _rot((0, 1), tilt - out * a1) * 0.25 * height
        k[an] = k[kn] + _rot((0, 1), tilt - out * a2) * 0.23 * height
    return k


def person_parts(k: np.ndarray, height: float, facing: bool, rng: np.random.Generator):
    """Body-part polygons with their colours, in drawing order."""
    warm = lambda: (rng.uniform(190, 255), rng.uniform(40, 150), rng.uniform(0, 50))   # noqa: E731
    cool = lambda: (rng.uniform(0, 50), rng.uniform(60, 170), rng.uniform(170, 255))  # noqa: E731
    left_col, right_col = warm(), cool()
    r_limb = 0.032 * height
    parts = []
    torso_col = tuple(rng.uniform(40, 220, 3))
    shoulders, hips = k[[5, 6]], k[[11, 12]]
    widen = (shoulders[0] - shoulders[1]) * 0.12
    parts.append((np.array([shoulders[0] + widen, shoulders[1] - widen, hips[1] - widen * 0.6,
                            hips[0] + widen * 0.6]), torso_col))
    neck = shoulders.mean(axis=0)
    head = (k[3] + k[4]) / 2
    parts.append((_limb(neck, head, 0.025 * height), torso_col))
    for (a, b), left in (((5, 7), True), ((7, 9), True), ((6, 8), False), ((8, 10), False),
                         ((11, 13), True), ((13, 15), True), ((12, 14), False), ((14, 16), False)):
        col = left_col if left else right_col
        parts.append((_limb(k[a], k[b], r_limb), col))
        parts.append((regular_polygon(*k[b], r_limb, r_limb, 8), col))
    skin = (rng.uniform(150, 240), rng.uniform(110, 190), rng.uniform(80, 150))
    parts.append((regular_polygon(*head, 0.065 * height, 0.07 * height, 16), skin if facing else (60, 45, 35)))
    return parts


def render_image(rng: np.random.Generator, width: int, height: int):
    """Draw one image; returns RGB array and per-person dicts (keypoints with visibility, polygons, mask)."""
    bg = np.array([rng.uniform(60, 200, 3)], np.float32)
    noise = smooth_noise(rng, height, width, 24)
    img = (bg * (1 + 0.25 * noise[..., None])).clip(0, 255)
    canvas = Image.fromarray(to_uint8(img))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(3, 9)):               # background clutter in muted colours
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        s = rng.uniform(8, 40)
        col = tuple(int(c) for c in rng.uniform(70, 170, 3))
        poly = regular_polygon(x, y, s, s * rng.uniform(0.3, 1), int(rng.integers(3, 7)), rng.uniform(0, 3))
        draw.polygon([tuple(p) for p in poly], fill=col)
    ids = Image.new("I", (width, height), 0)
    id_draw = ImageDraw.Draw(ids)
    people = []
    n = int(rng.integers(1, 4))
    for p in range(n):
        h = rng.uniform(0.45, 0.95) * height
        root = (rng.uniform(0.1, 0.9) * width, rng.uniform(0.45, 0.6) * height + rng.uniform(-0.1, 0.15) * h)
        facing = rng.random() < 0.7
        k = pose_keypoints(rng, root, h, facing)
        parts = person_parts(k, h, facing, rng)
        for poly, col in parts:
            pts = [tuple(q) for q in poly]
            draw.polygon(pts, fill=tuple(int(c) for c in col))
            id_draw.polygon(pts, fill=p + 1, outline=p + 1)
        for j, col in ((1, (20, 20, 20)), (2, (20, 20, 20))):
            if facing:
                e = regular_polygon(*k[j], 0.012 * h, 0.012 * h, 6)
                draw.polygon([tuple(q) for q in e], fill=col)
        people.append({"k": k, "facing": facing, "polys": [poly for poly, _ in parts]})
    rgb = np.asarray(canvas, np.float32) + rng.normal(0, 3, (height, width, 3))
    id_map = np.asarray(ids)
    for p, person in enumerate(people):
        kps = []
        for j, (x, y) in enumerate(person["k"]):
            xi, yi = int(round(x)), int(round(y))
            if not (0 <= xi < width and 0 <= yi < height) or (not person["facing"] and j in (0, 1, 2)):
                kps += [0, 0, 0]
                continue
            owner = id_map[yi, xi]
            kps += [round(float(x), 2), round(float(y), 2), 1 if owner > p + 1 else 2]
        mask = id_map == p + 1
        person["keypoints"], person["mask"] = kps, mask
    return to_uint8(rgb), people


def _annotation(person, ann_id, image_id, width, height):
    ys, xs = np.nonzero(person["mask"])
    segs = []
    for poly in person["polys"]:
        clipped = np.clip(poly, [0, 0], [width - 1, height - 1])
        segs.append([round(float(v), 2) for v in clipped.ravel()])
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
            "area": float(len(xs)), "num_keypoints": sum(1 for v in person["keypoints"][2::3] if v > 0),
            "keypoints": person["keypoints"], "segmentation": segs}


def num_samples(preset: str) -> int:
    return PRESETS[preset]["train"] + PRESETS[preset]["val"]


def generate(out: Path, preset: str, seed: int, tick=lambda: None) -> dict:
    """Write the dataset into `out`; `tick()` is called once per sample (progress)."""
    cfg = PRESETS[preset]
    width, height = cfg["size"]
    stats = {}
    ann_id = 1
    for split in ("train", "val"):
        images, annotations = [], []
        for i in range(cfg[split]):
            tick()
            image_id = IMAGE_ID_BASE[split] + i
            rng = sample_rng(seed, f"coco-{split}", i)
            rgb, people = render_image(rng, width, height)
            name = f"{image_id:012d}.jpg"
            save_jpeg(rgb, out / "images" / f"{split}2017" / name)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for person in people:
                if person["mask"].any():
                    annotations.append(_annotation(person, ann_id, image_id, width, height))
                    ann_id += 1
        data = {"info": {"description": "SYNTHETIC stick-figure keypoints (hrnas-repro)", "version": "1.0"},
                "licenses": [], "images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": "person", "supercategory": "person",
                                "keypoints": list(COCO_KEYPOINTS), "skeleton": [list(s) for s in COCO_SKELETON]}]}
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        (out / "annotations" / f"person_keypoints_{split}2017.json").write_text(json.dumps(data))
        labelled = [a for a in annotations if a["num_keypoints"] > 0]
        stats[f"{split}2017"] = (f"{len(images)} images, {len(annotations)} persons "
                                 f"({len(labelled)} with keypoints), {width}x{height} px")
    return stats
