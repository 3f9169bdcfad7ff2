"""Top-down pose geometry of the HRNet/HR-NAS COCO pipeline (docs/metrics-and-peers.md §3.2).

Conventions (as in HRNet): `center` is (x, y) in image pixels; `scale` is (w, h) of the person box
in units of `PIXEL_STD` = 200 px; `rot` is in degrees; `output_size` is (width, height); points are
pixel-index coordinates (pixel centres at integers), as cv2.warpAffine uses them.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from hrnas.data.common import normal, uniform

PIXEL_STD = 200.0
COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                  "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                  "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
NUM_JOINTS = 17
# 1-based pairs, as stored in the COCO json
COCO_SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
                 (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))
FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
UPPER_BODY_IDS = tuple(range(11))
JOINT_WEIGHTS = (1.0,) * 7 + (1.2, 1.2, 1.5, 1.5, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5)
OKS_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62,
                       1.07, 1.07, .87, .87, .89, .89]) / 10.0


def flip_permutation() -> np.ndarray:
    """Index array p with p[j] = the joint that j becomes under a horizontal flip."""
    perm = np.arange(NUM_JOINTS)
    for a, b in FLIP_PAIRS:
        perm[a], perm[b] = b, a
    return perm


def box_to_center_scale(x, y, w, h, aspect_ratio: float, padding: float = 1.25):
    """HRNet `_xywh2cs`: box -> centre and scale with the input's aspect ratio (w/h), times `padding`."""
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w / PIXEL_STD, h / PIXEL_STD], dtype=np.float32) * padding
    return center, scale


def get_affine_transform(center, scale, rot, output_size, inv: bool = False) -> np.ndarray:
    """2x3 matrix mapping image points to the `output_size` (w, h) crop (or back with `inv=True`).

    The crop is the box of width `scale[0] * 200` centred on `center`, rotated by `rot` degrees and
    scaled to the output width (a similarity, as HRNet's three-point construction gives).
    """
    center = np.asarray(center, dtype=np.float64)
    s = float(output_size[0]) / (float(np.asarray(scale)[0]) * PIXEL_STD)
    a = math.radians(rot)
    c, sn = math.cos(a), math.sin(a)
    rot_inv = np.array([[c, sn], [-sn, c]])  # R(-rot)
    dst_center = np.array([output_size[0] * 0.5, output_size[1] * 0.5])
    if not inv:
        lin = s * rot_inv
        return np.hstack([lin, (dst_center - lin @ center)[:, None]])
    lin = rot_inv.T / s
    return np.hstack([lin, (center - lin @ dst_center)[:, None]])


def affine_transform(pt, t: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to a point (2,) or to points (N, 2)."""
    pts = np.asarray(pt, dtype=np.float64)
    out = pts[..., :2] @ t[:, :2].T + t[:, 2]
    return out


def warp_image(img: Image.Image, t: np.ndarray, output_size) -> Image.Image:
    """Warp `img` with the forward matrix `t` into an `output_size` (w, h) image (bilinear, black
    border), matching cv2.warpAffine's pixel-index convention (PIL works with pixel corners)."""
    full = np.vstack([t, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    lin, off = inv[:, :2], inv[:, 2]
    off = off + 0.5 - lin @ np.array([0.5, 0.5])
    data = (lin[0, 0], lin[0, 1], off[0], lin[1, 0], lin[1, 1], off[1])
    return img.transform((int(output_size[0]), int(output_size[1])), Image.Transform.AFFINE, data,
                         resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


def fliplr_joints(joints: np.ndarray, vis: np.ndarray, width: int):
    """Mirror joints (17, 2+) of an image of `width` (x -> width - 1 - x) and swap left/right."""
    joints, vis = joints.copy(), vis.copy()
    joints[:, 0] = width - 1 - joints[:, 0]
    perm = flip_permutation()
    return joints[perm] * (vis[perm, None] > 0), vis[perm]


def half_body_center_scale(joints: np.ndarray, vis: np.ndarray, aspect_ratio: float, g: torch.Generator):
    """HRNet half-body augmentation: box around the upper or lower visible joints, x1.5.
    Returns (center, scale) or None when fewer than two joints are selected."""
    upper = [joints[j] for j in range(NUM_JOINTS) if vis[j] > 0 and j in UPPER_BODY_IDS]
    lower = [joints[j] for j in range(NUM_JOINTS) if vis[j] > 0 and j not in UPPER_BODY_IDS]
    if normal(g) < 0.5 and len(upper) > 2:
        selected = upper
    else:
        selected = lower if len(lower) > 2 else upper
    if len(selected) < 2:
        return None
    pts = np.asarray(selected, dtype=np.float32)[:, :2]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    center, scale = box_to_center_scale(lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1], aspect_ratio, 1.5)
    center[:] = pts.mean(axis=0)
    return center, scale


def generate_heatmaps(joints: np.ndarray, vis: np.ndarray, input_size, heatmap_size, sigma: float = 2.0):
    """HRNet `generate_target`: un-normalised Gaussians (peak 1) in a 6-sigma window at the rounded
    heatmap position; joints not labelled or whose window is off the map get weight 0.

    input_size and heatmap_size are (w, h). Returns heatmaps (17, h, w) float32 and weights (17,).
    """
    hw, hh = int(heatmap_size[0]), int(heatmap_size[1])
    stride = (input_size[0] / hw, input_size[1] / hh)
    heatmaps = np.zeros((NUM_JOINTS, hh, hw), dtype=np.float32)
    weight = (np.asarray(vis) > 0).astype(np.float32)
    radius = int(sigma * 3)
    size = 2 * radius + 1
    xs = np.arange(size, dtype=np.float32)
    g1 = np.exp(-((xs - radius) ** 2) / (2 * sigma ** 2))
    gauss = g1[None, :] * g1[:, None]
    for j in range(NUM_JOINTS):
        if weight[j] == 0:
            continue
        mx, my = int(joints[j][0] / stride[0] + 0.5), int(joints[j][1] / stride[1] + 0.5)
        x0, y0, x1, y1 = mx - radius, my - radius, mx + radius + 1, my + radius + 1
        if x0 >= hw or y0 >= hh or x1 <= 0 or y1 <= 0:
            weight[j] = 0
            continue
        gx0, gy0 = max(0, -x0), max(0, -y0)
        gx1, gy1 = min(x1, hw) - x0, min(y1, hh) - y0
        heatmaps[j, max(0, y0):min(y1, hh), max(0, x0):min(x1, hw)] = gauss[gy0:gy1, gx0:gx1]
    return heatmaps, weight


def random_scale_rotation(g: torch.Generator, scale_factor: float, rot_factor: float, rot_prob: float):
    """HRNet: s ~ clip(N(1, sf), 1-sf, 1+sf); r ~ clip(N(0, rf), -2rf, 2rf) with probability rot_prob."""
    s = float(np.clip(normal(g, 1.0, scale_factor), 1 - scale_factor, 1 + scale_factor))
    r = float(np.clip(normal(g, 0.0, rot_factor), -2 * rot_factor, 2 * rot_factor))
    return s, (r if uniform(g) <= rot_prob else 0.0)
