"""Rotated BEV IoU and 3D IoU against shapely polygons (hrnas.metrics.box_ops)."""
import math

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from hrnas.metrics.box_ops import (boxes_to_corners_bev, iou_3d, paired_image_overlap,
                                   rotated_iou_bev)


def _shapely_bev(box):
    x, y, l, w, yaw = box
    c, s = math.cos(yaw), math.sin(yaw)
    pts = [(x + c * dx - s * dy, y + s * dx + c * dy)
           for dx, dy in ((l / 2, w / 2), (-l / 2, w / 2), (-l / 2, -w / 2), (l / 2, -w / 2))]
    return Polygon(pts)


def _random_pairs(rng, n):
    a = np.c_[rng.uniform(-3, 3, (n, 2)), rng.uniform(0.3, 5, (n, 2)), rng.uniform(-4, 4, n)]
    b = np.c_[a[:, :2] + rng.uniform(-2.5, 2.5, (n, 2)), rng.uniform(0.3, 5, (n, 2)),
              rng.uniform(-4, 4, n)]
    b[:10] = a[:10]                      # identical boxes
    b[10:20, :4] = a[10:20, :4]          # same box turned by 90 degrees
    b[10:20, 4] = a[10:20, 4] + np.pi / 2
    return a, b


def test_bev_iou_matches_shapely_on_random_pairs():
    a, b = _random_pairs(np.random.default_rng(0), 200)
    ours = np.diag(rotated_iou_bev(a, b))
    ref = []
    for p, q in zip(a, b):
        pa, pb = _shapely_bev(p), _shapely_bev(q)
        inter = pa.intersection(pb).area
        ref.append(inter / (pa.area + pb.area - inter))
    ref = np.array(ref)
    assert (ref > 0).sum() > 150  # the pairs really overlap
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    np.testing.assert_allclose(ours[:10], 1.0, atol=1e-9)


def test_3d_iou_matches_shapely_times_height():
    rng = np.random.default_rng(1)
    a2, b2 = _random_pairs(rng, 200)
    za, zb = rng.uniform(-1, 1, 200), rng.uniform(-1, 1, 200)
    ha, hb = rng.uniform(0.5, 2, 200), rng.uniform(0.5, 2, 200)
    a = np.c_[a2[:, :2], za, a2[:, 2:4], ha, a2[:, 4]]
    b = np.c_[b2[:, :2], zb, b2[:, 2:4], hb, b2[:, 4]]
    ours = np.diag(iou_3d(a, b))
    ref = []
    for p, q, p2, q2 in zip(a, b, a2, b2):
        inter = _shapely_bev(p2).intersection(_shapely_bev(q2)).area
        dz = max(0.0, min(p[2] + p[5] / 2, q[2] + q[5] / 2) - max(p[2] - p[5] / 2, q[2] - q[5] / 2))
        vol = inter * dz
        ref.append(vol / (p[3] * p[4] * p[5] + q[3] * q[4] * q[5] - vol))
    np.testing.assert_allclose(ours, np.array(ref), atol=1e-6)


def test_known_values_and_conventions():
    # unit squares shifted by half a side: I = 0.5, U = 1.5
    iou = rotated_iou_bev(np.array([[0, 0, 1, 1, 0.0]]), np.array([[0.5, 0, 1, 1, 0.0]]))
    assert iou.shape == (1, 1) and iou[0, 0] == pytest.approx(1 / 3)
    # 2x2 square and itself turned by 45 degrees: regular octagon of area 8 (sqrt 2 - 1)
    oct_area = 8 * (math.sqrt(2) - 1)
    iou = rotated_iou_bev(np.array([[0, 0, 2, 2, 0.0]]), np.array([[0, 0, 2, 2, math.pi / 4]]))
    assert iou[0, 0] == pytest.approx(oct_area / (8 - oct_area))
    # yaw is counter-clockwise: (l=4, w=1, yaw=90deg) is the axis-aligned (l=1, w=4) box
    assert rotated_iou_bev([[0, 0, 4, 1, math.pi / 2]], [[0, 0, 1, 4, 0]])[0, 0] == pytest.approx(1)
    corners = boxes_to_corners_bev(np.array([[1.0, 2.0, 4.0, 2.0, math.pi / 2]]))
    np.testing.assert_allclose(corners[0, 0], [1 - 1, 2 + 2], atol=1e-12)  # (l/2, w/2) -> (-w/2, l/2)
    # 3D: same footprint, heights [0, 2] and [1, 3]: I = 1 * 1 * 1, U = 2 + 2 - 1
    assert iou_3d([[0, 0, 1, 1, 1, 2, 0]], [[0, 0, 2, 1, 1, 2, 0]])[0, 0] == pytest.approx(1 / 3)


def test_torch_in_torch_out_and_shapes():
    a = torch.tensor([[0, 0, 1, 1, 0.0], [5, 5, 2, 1, 0.3]])
    b = torch.tensor([[0.5, 0, 1, 1, 0.0]], dtype=torch.float64)
    out = rotated_iou_bev(a, b)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, 1)
    assert out[0, 0].item() == pytest.approx(1 / 3) and out[1, 0].item() == 0.0
    assert rotated_iou_bev(np.zeros((0, 5)), np.zeros((3, 5))).shape == (0, 3)
    assert iou_3d(torch.zeros(2, 7), torch.zeros(0, 7)).shape == (2, 0)


def test_image_overlap():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [10, 0, 20, 10]], float)
    np.testing.assert_allclose(paired_image_overlap(a, b), [50 / 150, 0.0])
    np.testing.assert_allclose(paired_image_overlap(a, b, criterion="a"), [0.5, 0.0])
