"""COCO person keypoints, top-down (HRNet `coco.py`/`JointsDataset`; docs/metrics-and-peers.md §3.2).

Layout: `ROOT/annotations/person_keypoints_{train,val}2017.json` and images in `ROOT/{train,val}2017/`
or `ROOT/images/{train,val}2017/`. One sample per person instance: GT boxes (area > 0, at least one
labelled keypoint) or, for evaluation, boxes from a detection-results JSON
(`[{image_id, category_id, bbox, score}]`).
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from hrnas.data.common import AugmentationRNG, read_rgb, require_dir, require_file, uniform
from hrnas.data.pose_transforms import (NUM_JOINTS, PIXEL_STD, affine_transform, box_to_center_scale,
                                        fliplr_joints, generate_heatmaps, get_affine_transform,
                                        half_body_center_scale, random_scale_rotation, warp_image)
from hrnas.data.transforms import normalize, pil_to_image
from hrnas.errors import UserError

LAYOUT = ("ROOT/annotations/person_keypoints_{train,val}2017.json + images in ROOT/{train,val}2017/ "
          "or ROOT/images/{train,val}2017/")


def load_coco(path: Path) -> COCO:
    """Load a COCO annotation file with pycocotools; malformed files raise UserError naming the file."""
    path = require_file(path, "COCO annotations")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"COCO annotation file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or any(k not in data for k in ("images", "annotations", "categories")):
        raise UserError(f"COCO annotation file {path} lacks the keys images, annotations, categories")
    for ann in data["annotations"]:
        if len(ann.get("keypoints", ())) != 3 * NUM_JOINTS or len(ann.get("bbox", ())) != 4:
            raise UserError(f"COCO annotation file {path}: annotation id {ann.get('id')} needs 51 keypoint "
                            "values and a 4-number bbox")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _clean_box(bbox, area, width, height):
    """HRNet's GT box sanitation: clip to the image; None if empty."""
    x, y, w, h = bbox
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(width - 1.0, x1 + max(0.0, w - 1)), min(height - 1.0, y1 + max(0.0, h - 1))
    if area > 0 and x2 >= x1 and y2 >= y1:
        return x1, y1, x2 - x1, y2 - y1
    return None


def read_detections(path) -> list[dict]:
    """A COCO detection-results JSON (``[{image_id, category_id, bbox: [x, y, w, h], score}, ...]``, e.g.
    ``COCO_val2017_detections_AP_H_56_person.json``) as a list of dicts with int ids, float boxes and
    scores; a missing or malformed file raises UserError naming the file and the first bad entry."""
    path = require_file(Path(path).expanduser(), "COCO detections")
    what = "a COCO detection-results JSON (a list of {image_id, category_id, bbox, score})"
    try:
        dets = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"COCO detections {path} is not valid JSON ({e}); expected {what}") from None
    if not isinstance(dets, list):
        raise UserError(f"COCO detections {path} holds a JSON {type(dets).__name__}, not {what}")
    out = []
    for i, det in enumerate(dets):
        try:
            bbox = [float(v) for v in det["bbox"]]
            if len(bbox) != 4 or isinstance(det["score"], bool) or isinstance(det["image_id"], bool):
                raise ValueError
            out.append({"image_id": int(det["image_id"]), "category_id": int(det["category_id"]),
                        "bbox": bbox, "score": float(det["score"])})
        except (KeyError, TypeError, ValueError):
            raise UserError(f"COCO detections {path}: entry {i} ({str(det)[:80]}) is not "
                            f"{{image_id, category_id, bbox: [x, y, w, h], score}}") from None
    return out


class CocoKeypointsDataset(torch.utils.data.Dataset):
    """Top-down person crops with heatmap targets. See `hrnas.data.build_dataset` for the options.

    Sample meta: `center`, `scale` (box size / 200 px, HRNet units) and `rotation` (degrees) give the
    crop via `pose_transforms.get_affine_transform(center, scale, rotation, (W, H))`; `score` is the box
    score (1 for GT boxes); `area` is the padded box area (scale * 200)^2 that HRNet uses for OKS-NMS.
    """

    num_classes = NUM_JOINTS  # keypoints

    def __init__(self, root, split: str, *, train: bool, size=(256, 192), sigma: float = 2.0,
                 heatmap_stride: int = 4, detections=None, det_score_thr: float = 0.0,
                 flip_prob: float = 0.5, half_body_prob: float = 0.3, scale_factor: float = 0.35,
                 rot_factor: float = 45.0, rot_prob: float = 0.6, seed: int = 0):
        if split not in ("train", "val"):
            raise UserError(f"COCO split {split!r} is not one of train, val")
        root = require_dir(Path(root), "COCO", LAYOUT)
        ann_file = root / "annotations" / f"person_keypoints_{split}2017.json"
        if not ann_file.is_file():
            raise UserError(f"COCO: annotation file {ann_file} not found; expected layout {LAYOUT}")
        for cand in (root / f"{split}2017", root / "images" / f"{split}2017"):
            if cand.is_dir():
                self.image_dir = cand
                break
        else:
            raise UserError(f"COCO: image folder {root / f'{split}2017'} (or {root / 'images' / f'{split}2017'}) "
                            f"not found; expected layout {LAYOUT}")
        self.coco = load_coco(ann_file)
        self.train = train
        self.input_hw = (int(size[0]), int(size[1]))
        self.input_wh = (self.input_hw[1], self.input_hw[0])
        self.heatmap_wh = (self.input_wh[0] // heatmap_stride, self.input_wh[1] // heatmap_stride)
        self.aspect_ratio = self.input_wh[0] / self.input_wh[1]
        self.sigma = sigma
        self.flip_prob, self.half_body_prob = flip_prob, half_body_prob
        self.scale_factor, self.rot_factor, self.rot_prob = scale_factor, rot_factor, rot_prob
        self.records = (self._detection_records(Path(detections), det_score_thr) if detections
                        else self._gt_records())
        if not self.records:
            raise UserError(f"COCO: {ann_file} has no person instances with keypoints")
        self.rng = AugmentationRNG(seed)

    def _record(self, image_id, box, joints, score):
        center, scale = box_to_center_scale(*box, self.aspect_ratio)
        img = self.coco.imgs[image_id]
        return {"image_id": image_id, "file": self.image_dir / img["file_name"], "center": center,
                "scale": scale, "joints": joints, "score": float(score),
                "area": float(np.prod(scale * PIXEL_STD))}

    def _gt_records(self):
        records = []
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann.get("category_id") != 1 or ann.get("iscrowd", 0) or max(ann["keypoints"]) == 0:
                    continue
                box = _clean_box(ann["bbox"], ann.get("area", ann["bbox"][2] * ann["bbox"][3]), info["width"],
                                 info["height"])
                if box is None:
                    continue
                joints = np.asarray(ann["keypoints"], dtype=np.float32).reshape(NUM_JOINTS, 3)
                joints[:, 2] = np.minimum(joints[:, 2], 1)
                records.append(self._record(image_id, box, joints, 1.0))
        return records

    def _detection_records(self, path: Path, thr: float):
        records = []
        for det in read_detections(path):
            if det["category_id"] != 1 or det["score"] < thr:
                continue
            if det["image_id"] not in self.coco.imgs:
                raise UserError(f"COCO detections {path}: image_id {det['image_id']} is not in the annotations")
            records.append(self._record(det["image_id"], det["bbox"], np.zeros((NUM_JOINTS, 3), np.float32),
                                        det["score"]))
        if not records:
            raise UserError(f"COCO detections {path}: no person (category_id 1) detection with score >= {thr}")
        return records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        img = read_rgb(rec["file"])
        joints, vis = rec["joints"][:, :2].copy(), rec["joints"][:, 2].copy()
        center, scale, rot = rec["center"].copy(), rec["scale"].copy(), 0.0
        if self.train:
            g = self.rng.get()
            if vis.sum() > 8 and uniform(g) < self.half_body_prob:
                half = half_body_center_scale(joints, vis, self.aspect_ratio, g)
                if half is not None:
                    center, scale = half
            s, rot = random_scale_rotation(g, self.scale_factor, self.rot_factor, self.rot_prob)
            scale = scale * s
            if uniform(g) < self.flip_prob:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                joints, vis = fliplr_joints(joints, vis, img.width)
                center[0] = img.width - center[0] - 1
        t = get_affine_transform(center, scale, rot, self.input_wh)
        crop = warp_image(img, t, self.input_wh)
        joints = np.where(vis[:, None] > 0, affine_transform(joints, t), 0.0).astype(np.float32)
        heatmaps, weight = generate_heatmaps(joints, vis, self.input_wh, self.heatmap_wh, self.sigma)
        return {
            "image": normalize(pil_to_image(crop)),
            "heatmaps": torch.from_numpy(heatmaps),
            "target_weight": torch.from_numpy(weight),
            "joints": torch.from_numpy(np.concatenate([joints, vis[:, None]], axis=1).astype(np.float32)),
            "center": torch.from_numpy(np.asarray(center, np.float32)),
            "scale": torch.from_numpy(np.asarray(scale, np.float32)),
            "rotation": torch.tensor(rot, dtype=torch.float32),
            "image_id": torch.tensor(rec["image_id"], dtype=torch.int64),
            "score": torch.tensor(rec["score"], dtype=torch.float32),
            "area": torch.tensor(rec["area"], dtype=torch.float32),
        }
