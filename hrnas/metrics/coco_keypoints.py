"""Top-down COCO keypoint evaluation (HRNet / mmpose convention, docs/metrics-and-peers.md §3.2,
docs/authors-code.md §5): heatmap decoding (argmax + quarter-pixel shift toward the higher
neighbour), the flip test (flip back, swap left/right joints, shift one pixel right, average),
mapping back to the image, rescoring, OKS-NMS and the pycocotools ``COCOeval`` metric.

Box convention (``transform_preds``): ``center`` = (cx, cy) and ``scale`` = (w, h) of the crop in
image pixels after the aspect-ratio fix and the x1.25 padding; rotation is 0 at test time. A
heatmap of size (W, H) covers that crop, so heatmap point (x, y) maps to
``(x * w / W + cx - w / 2, y * h / H + cy - h / 2)``.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch

from hrnas.errors import UserError
from hrnas.io import atomic_write_json

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87,
                        .87, .89, .89]) / 10.0
STATS_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def get_max_preds(heatmaps):
    """Argmax of each heatmap (N, K, H, W): coords (N, K, 2) as (x, y) and maxvals (N, K, 1).

    Joints whose maximum is <= 0 get coordinates (0, 0), as in HRNet.
    """
    hm = _np(heatmaps).astype(np.float64)
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, h * w)
    idx = flat.argmax(axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2)
    coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float64)
    return coords * (maxvals > 0), maxvals


def refine_quarter_pixel(coords, heatmaps) -> np.ndarray:
    """Move each (x, y) by 0.25 px toward the higher neighbour (sign of the central difference).

    Applied only where 1 < px < W-1 and 1 < py < H-1 with px, py the rounded coordinates (HRNet).
    """
    hm = _np(heatmaps).astype(np.float64)
    out = _np(coords).astype(np.float64).copy()
    n, k, h, w = hm.shape
    px = np.floor(out[..., 0] + 0.5).astype(np.int64)
    py = np.floor(out[..., 1] + 0.5).astype(np.int64)
    ok = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    cx, cy = np.clip(px, 1, w - 2), np.clip(py, 1, h - 2)
    ni, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    dx = hm[ni, ki, cy, cx + 1] - hm[ni, ki, cy, cx - 1]
    dy = hm[ni, ki, cy + 1, cx] - hm[ni, ki, cy - 1, cx]
    out[..., 0] += np.where(ok, np.sign(dx) * 0.25, 0.0)
    out[..., 1] += np.where(ok, np.sign(dy) * 0.25, 0.0)
    return out


def flip_back(heatmaps, flip_pairs=COCO_FLIP_PAIRS):
    """Heatmaps (N, K, H, W) of a horizontally flipped image, mapped back: mirror the W axis and
    swap left/right joints. Accepts and returns a torch tensor or a numpy array."""
    is_torch = isinstance(heatmaps, torch.Tensor)
    perm = list(range(heatmaps.shape[1]))
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    if is_torch:
        return heatmaps.flip(3)[:, perm]
    return np.ascontiguousarray(np.asarray(heatmaps)[:, perm, :, ::-1])


def merge_flip(heatmaps, heatmaps_flipped, flip_pairs=COCO_FLIP_PAIRS, shift: bool = True):
    """Flip test: average the heatmaps with the flipped-back heatmaps of the mirrored input; the
    flipped-back maps are shifted one pixel right first (HRNet ``SHIFT_HEATMAP``)."""
    back = flip_back(heatmaps_flipped, flip_pairs)
    if shift:
        shifted = back.clone() if isinstance(back, torch.Tensor) else back.copy()
        shifted[..., 1:] = back[..., :-1]
        back = shifted
    return (heatmaps + back) * 0.5


def transform_preds(coords, center, scale, heatmap_size) -> np.ndarray:
    """Map heatmap coordinates (N, K, 2) back to the image (box convention in the module doc).

    center, scale: (N, 2) or (2,); heatmap_size: (W, H).
    """
    c = _np(coords).astype(np.float64)
    center = _np(center).astype(np.float64).reshape(-1, 1, 2)
    scale = _np(scale).astype(np.float64).reshape(-1, 1, 2)
    size = np.asarray(heatmap_size, dtype=np.float64).reshape(1, 1, 2)
    return c * (scale / size) + center - scale * 0.5


def get_final_preds(heatmaps, center, scale):
    """Decode heatmaps (N, K, H, W) into image keypoints (N, K, 2) and their maxima (N, K, 1)."""
    hm = _np(heatmaps)
    coords, maxvals = get_max_preds(hm)
    coords = refine_quarter_pixel(coords, hm)
    return transform_preds(coords, center, scale, (hm.shape[3], hm.shape[2])), maxvals


def rescore(box_scores, maxvals, thr: float = 0.2) -> np.ndarray:
    """Instance score = box score x mean of the joint maxima above ``thr`` (0 if none is)."""
    mv = _np(maxvals).astype(np.float64).reshape(len(_np(box_scores)), -1)
    above = mv > thr
    kpt = np.where(above.any(1), (mv * above).sum(1) / np.maximum(above.sum(1), 1), 0.0)
    return _np(box_scores).astype(np.float64) * kpt


def oks_iou(kpts, others, area: float, other_areas, sigmas=COCO_SIGMAS, vis_thr=None):
    """Object keypoint similarity of one instance (K, 3) with others (M, K, 3): (M,).

    The scale is the mean of the two areas (HRNet ``oks_iou``); with ``vis_thr`` only joints
    visible (score > vis_thr) in both instances count.
    """
    g = _np(kpts).astype(np.float64).reshape(-1, 3)
    d = _np(others).astype(np.float64).reshape(-1, g.shape[0], 3)
    var = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    s = (area + _np(other_areas).astype(np.float64).reshape(-1)) / 2 + np.spacing(1)
    e = ((d[..., 0] - g[:, 0]) ** 2 + (d[..., 1] - g[:, 1]) ** 2) / var / s[:, None] / 2
    use = np.ones_like(e, bool) if vis_thr is None else (g[:, 2] > vis_thr) & (d[..., 2] > vis_thr)
    n = use.sum(1)
    return np.where(n > 0, (np.exp(-e) * use).sum(1) / np.maximum(n, 1), 0.0)


def oks_nms(instances, thr: float = 0.9, sigmas=COCO_SIGMAS, vis_thr=None) -> list[int]:
    """Greedy OKS-NMS: indices of the kept instances (dicts with ``keypoints`` (K, 3), ``score``,
    ``area``), highest score first; an instance is dropped when its OKS with a kept one > thr."""
    if not instances:
        return []
    kpts = np.stack([_np(i["keypoints"]).astype(np.float64).reshape(-1, 3) for i in instances])
    scores = np.array([float(i["score"]) for i in instances])
    areas = np.array([float(i["area"]) for i in instances])
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        oks = oks_iou(kpts[i], kpts[rest], areas[i], areas[rest], sigmas, vis_thr)
        order = rest[oks <= thr]
    return keep


def _check_results(results, coco_gt) -> list[dict]:
    img_ids = set(coco_gt.getImgIds())
    clean = []
    for n, r in enumerate(results):
        for key in ("image_id", "category_id", "keypoints", "score"):
            if key not in r:
                raise UserError(f"keypoint result {n} lacks the field {key!r}")
        kp = [float(v) for v in _np(r["keypoints"]).reshape(-1)]
        if len(kp) % 3 or not kp:
            raise UserError(f"keypoint result {n}: 'keypoints' needs 3 values a joint, "
                            f"got {len(kp)}")
        if not np.all(np.isfinite(kp)) or not np.isfinite(float(r["score"])):
            raise UserError(f"keypoint result {n}: non-finite keypoint or score")
        img = int(r["image_id"]) if isinstance(r["image_id"], np.integer) else r["image_id"]
        if img not in img_ids:
            raise UserError(f"keypoint result {n}: image_id {img} is not in the ground truth")
        clean.append({"image_id": img, "category_id": int(r["category_id"]),
                      "keypoints": kp, "score": float(r["score"])})
    return clean


def evaluate_keypoints(coco_gt, results) -> dict:
    """COCO keypoint AP/AR (fractions) of ``results`` (dicts with image_id, category_id,
    keypoints [x, y, v] * K, score) against a ``pycocotools.coco.COCO`` via
    ``COCOeval(iouType="keypoints")``; pycocotools' prints are silenced."""
    from pycocotools.cocoeval import COCOeval

    clean = _check_results(results, coco_gt)
    if not clean:
        return {name: 0.0 for name in STATS_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(clean)
        ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STATS_NAMES, ev.stats)}


def write_results_json(path, results) -> None:
    """Write keypoint results as COCO result JSON, atomically (temp file + rename)."""
    path = Path(path)
    rows = [{"image_id": int(r["image_id"]), "category_id": int(r["category_id"]),
             "keypoints": [float(v) for v in _np(r["keypoints"]).reshape(-1)],
             "score": float(r["score"])} for r in results]
    atomic_write_json(path, rows, indent=None)
