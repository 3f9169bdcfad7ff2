"""Box geometry for 3D detection: rotated bird's-eye-view (BEV) IoU, 3D IoU, 2D image-box overlap.

Conventions (docs/datasets.md §3.5): a LiDAR box is (x, y, z_centre, l, w, h, yaw) with
yaw measured counter-clockwise from the x axis and l along the heading; a BEV box is its
(x, y, l, w, yaw) part. The intersection of two rotated rectangles is computed exactly, vectorised
over pairs: the intersection polygon's vertices are the corners of each box inside the other plus
the edge/edge crossings; they are ordered by angle around their centroid and the shoelace formula
gives the area (docs/metrics-and-peers.md §4.6 (item 1)).

Functions accept numpy arrays or torch tensors; a torch input gives a torch output (dtype and device
of the first argument), a numpy input a float64 numpy output.
"""
from __future__ import annotations

import numpy as np

try:  # torch is a hard dependency of the package, but keep this module usable without it
    import torch
except ImportError:  # pragma: no cover
    torch = None

_EPS = 1e-9
_CHUNK = 16384  # pairs per vectorised block (about 40 MB of temporaries)


def _as_numpy(x, ncols: int, name: str) -> np.ndarray:
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, ncols)
    if arr.ndim != 2 or arr.shape[1] < ncols:
        raise ValueError(f"{name}: expected an (N, {ncols}) array of boxes, got shape {arr.shape}")
    return arr


def _like(result: np.ndarray, ref):
    if torch is not None and isinstance(ref, torch.Tensor):
        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        return torch.from_numpy(result).to(device=ref.device, dtype=dtype)
    return result


def boxes_to_corners_bev(boxes) -> np.ndarray:
    """Corners (N, 4, 2) of BEV boxes (N, 5) = (x, y, l, w, yaw), counter-clockwise order."""
    b = _as_numpy(boxes, 5, "boxes")
    half = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    local = half[None] * b[:, None, 2:4]  # (N, 4, 2): (+-l/2, +-w/2)
    c, s = np.cos(b[:, 4])[:, None], np.sin(b[:, 4])[:, None]
    x = local[..., 0] * c - local[..., 1] * s + b[:, None, 0]
    y = local[..., 0] * s + local[..., 1] * c + b[:, None, 1]
    return _like(np.stack([x, y], axis=-1), boxes)


def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


def _inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """(P, K) mask: points (P, K, 2) inside (or on) counter-clockwise convex quads poly (P, 4, 2)."""
    edge = np.roll(poly, -1, axis=1) - poly  # (P, 4, 2)
    rel = points[:, :, None, :] - poly[:, None, :, :]  # (P, K, 4, 2)
    cr = _cross(edge[:, None, :, 0], edge[:, None, :, 1], rel[..., 0], rel[..., 1])
    scale = np.abs(edge).sum(-1).max(-1)[:, None, None] ** 2 + 1.0
    return (cr >= -_EPS * scale).all(axis=2)


def _edge_crossings(pa: np.ndarray, pb: np.ndarray):
    """Crossing points (P, 16, 2) of the 4 edges of pa with the 4 edges of pb, and their validity."""
    p = pa[:, :, None, :]
    r = (np.roll(pa, -1, axis=1) - pa)[:, :, None, :]
    q = pb[:, None, :, :]
    s = (np.roll(pb, -1, axis=1) - pb)[:, None, :, :]
    denom = _cross(r[..., 0], r[..., 1], s[..., 0], s[..., 1])
    qp = q - p
    ok = np.abs(denom) > _EPS * (np.abs(r).sum(-1) * np.abs(s).sum(-1) + _EPS)
    safe = np.where(ok, denom, 1.0)
    t = _cross(qp[..., 0], qp[..., 1], s[..., 0], s[..., 1]) / safe
    u = _cross(qp[..., 0], qp[..., 1], r[..., 0], r[..., 1]) / safe
    ok &= (t >= -_EPS) & (t <= 1 + _EPS) & (u >= -_EPS) & (u <= 1 + _EPS)
    pts = p + t[..., None] * r
    n = pa.shape[0]
    return pts.reshape(n, 16, 2), ok.reshape(n, 16)


def _quad_intersection_area(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """Area (P,) of the intersection of paired convex quads pa, pb (P, 4, 2), counter-clockwise."""
    cross_pts, cross_ok = _edge_crossings(pa, pb)
    pts = np.concatenate([pa, pb, cross_pts], axis=1)  # (P, 24, 2)
    valid = np.concatenate([_inside(pa, pb), _inside(pb, pa), cross_ok], axis=1)
    count = valid.sum(1)
    centre = (pts * valid[..., None]).sum(1) / np.maximum(count, 1)[:, None]
    rel = pts - centre[:, None, :]
    angle = np.where(valid, np.arctan2(rel[..., 1], rel[..., 0]), np.inf)
    order = np.argsort(angle, axis=1, kind="stable")
    rel = np.take_along_axis(rel, order[..., None], axis=1)
    valid = np.take_along_axis(valid, order, axis=1)
    rel = np.where(valid[..., None], rel, rel[:, :1, :])  # pad with the first vertex: no extra area
    nxt = np.roll(rel, -1, axis=1)
    area = 0.5 * _cross(rel[..., 0], rel[..., 1], nxt[..., 0], nxt[..., 1]).sum(1)
    return np.where(count >= 3, np.maximum(area, 0.0), 0.0)


def paired_bev_intersection(a, b) -> np.ndarray:
    """Intersection areas (P,) of paired BEV boxes a[i], b[i] (each (P, 5): x, y, l, w, yaw).

    Pairs whose circumscribed circles do not meet are skipped (area 0); the rest is computed in
    blocks of ``_CHUNK`` pairs to bound memory.
    """
    a = _as_numpy(a, 5, "a")[:, :5]
    b = _as_numpy(b, 5, "b")[:, :5]
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired boxes need equal lengths, got {a.shape[0]} and {b.shape[0]}")
    out = np.zeros(a.shape[0])
    reach = 0.5 * (np.hypot(a[:, 2], a[:, 3]) + np.hypot(b[:, 2], b[:, 3]))
    near = np.flatnonzero(np.hypot(a[:, 0] - b[:, 0], a[:, 1] - b[:, 1]) < reach)
    for start in range(0, near.size, _CHUNK):
        idx = near[start:start + _CHUNK]
        out[idx] = _quad_intersection_area(boxes_to_corners_bev(a[idx]), boxes_to_corners_bev(b[idx]))
    return out


def _all_pairs(n: int, m: int):
    return np.repeat(np.arange(n), m), np.tile(np.arange(m), n)


def rotated_iou_bev(a, b):
    """IoU matrix (N, M) of rotated BEV boxes a (N, 5) and b (M, 5) = (x, y, l, w, yaw)."""
    na, nb = _as_numpy(a, 5, "a")[:, :5], _as_numpy(b, 5, "b")[:, :5]
    i, j = _all_pairs(len(na), len(nb))
    inter = paired_bev_intersection(na[i], nb[j])
    union = na[i, 2] * na[i, 3] + nb[j, 2] * nb[j, 3] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return _like(iou.reshape(len(na), len(nb)), a)


def paired_iou_3d(a, b, bev_inter=None) -> np.ndarray:
    """3D IoU (P,) of paired LiDAR boxes (P, 7) = (x, y, z_centre, l, w, h, yaw).

    ``bev_inter`` may pass precomputed ``paired_bev_intersection`` areas of the same pairs.
    """
    a = _as_numpy(a, 7, "a")[:, :7]
    b = _as_numpy(b, 7, "b")[:, :7]
    inter = paired_bev_intersection(a[:, [0, 1, 3, 4, 6]], b[:, [0, 1, 3, 4, 6]]) \
        if bev_inter is None else np.asarray(bev_inter, dtype=np.float64)
    top = np.minimum(a[:, 2] + a[:, 5] / 2, b[:, 2] + b[:, 5] / 2)
    bottom = np.maximum(a[:, 2] - a[:, 5] / 2, b[:, 2] - b[:, 5] / 2)
    inter_vol = inter * np.maximum(top - bottom, 0.0)
    union = a[:, 3] * a[:, 4] * a[:, 5] + b[:, 3] * b[:, 4] * b[:, 5] - inter_vol
    return np.where(union > 0, inter_vol / np.where(union > 0, union, 1.0), 0.0)


def iou_3d(a, b):
    """3D IoU matrix (N, M): BEV intersection x height overlap / union volume (LiDAR boxes (., 7))."""
    na, nb = _as_numpy(a, 7, "a")[:, :7], _as_numpy(b, 7, "b")[:, :7]
    i, j = _all_pairs(len(na), len(nb))
    return _like(paired_iou_3d(na[i], nb[j]).reshape(len(na), len(nb)), a)


def paired_image_overlap(a, b, criterion: str = "union") -> np.ndarray:
    """Overlap (P,) of paired 2D boxes (P, 4) = (x1, y1, x2, y2): IoU, or intersection / area of a.

    Follows the KITTI devkit: no +1 on widths; boxes that only touch overlap 0.
    """
    a = _as_numpy(a, 4, "a")[:, :4]
    b = _as_numpy(b, 4, "b")[:, :4]
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    if criterion == "union":
        denom = area_a + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    elif criterion == "a":
        denom = area_a
    else:
        raise ValueError(f"criterion must be 'union' or 'a', got {criterion!r}")
    return np.where(inter > 0, inter / np.where(inter > 0, denom, 1.0), 0.0)
