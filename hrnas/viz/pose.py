"""Human pose skeletons (supplement Fig. 3): COCO's 17 keypoints and 19 limbs drawn on images.

Keypoints are (17, 3) arrays of (x, y, score) in image pixels (score = visibility or confidence); a
keypoint below ``score_thr`` is not drawn, nor are its limbs. Left limbs are blue, right limbs orange,
the centre ones (eyes, shoulders, hips, nose) green.
"""
from __future__ import annotations

import math

import numpy as np

import matplotlib.pyplot as plt

from hrnas.errors import UserError
from hrnas.viz.plots import save_figure
from hrnas.viz.seg import _as_list, as_image

NUM_KEYPOINTS = 17
# COCO's person skeleton (the 1-based pairs of person_keypoints annotations), 0-based.
COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
                 (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
# COCO order: nose, then (left, right) pairs of eyes, ears, shoulders, elbows, wrists, hips, knees, ankles.
LEFT_KEYPOINTS = frozenset(range(1, NUM_KEYPOINTS, 2))
RIGHT_KEYPOINTS = frozenset(range(2, NUM_KEYPOINTS, 2))
SIDE_COLORS = {"left": "#1f77ff", "right": "#ff7f0e", "centre": "#2ca02c"}


def limb_side(a: int, b: int) -> str:
    """"left" / "right" when the limb touches only that side (and the nose), else "centre"."""
    sides = {("left" if k in LEFT_KEYPOINTS else "right" if k in RIGHT_KEYPOINTS else "centre") for k in (a, b)}
    sides.discard("centre")
    return sides.pop() if len(sides) == 1 else "centre"


def _keypoints(kp, name: str = "keypoints") -> np.ndarray:
    if hasattr(kp, "detach"):
        kp = kp.detach().cpu().numpy()
    arr = np.asarray(kp, dtype=np.float64)
    if arr.ndim == 2 and arr.shape == (NUM_KEYPOINTS, 2):
        arr = np.concatenate([arr, np.ones((NUM_KEYPOINTS, 1))], axis=1)
    if arr.ndim != 2 or arr.shape != (NUM_KEYPOINTS, 3):
        raise UserError(f"{name}: expected ({NUM_KEYPOINTS}, 3) keypoints (x, y, score), got shape {arr.shape}")
    return arr


def draw_skeleton(ax, keypoints, score_thr: float = 0.2, linewidth: float = 2.5, markersize: float = 4.0):
    """Draw one person's skeleton on ``ax``; returns the limb lines drawn (``Line2D``, gid ``limb{a}-{b}``)."""
    kp = _keypoints(keypoints)
    if not math.isfinite(score_thr):
        raise UserError(f"score_thr: expected a finite number, got {score_thr!r}")
    visible = (kp[:, 2] >= score_thr) & np.all(np.isfinite(kp), axis=1)
    lines = []
    for a, b in COCO_SKELETON:
        if visible[a] and visible[b]:
            (line,) = ax.plot(kp[[a, b], 0], kp[[a, b], 1], "-", color=SIDE_COLORS[limb_side(a, b)],
                              lw=linewidth, solid_capstyle="round", zorder=3)
            line.set_gid(f"limb{a}-{b}")
            lines.append(line)
    for k in np.flatnonzero(visible):
        side = "left" if k in LEFT_KEYPOINTS else "right" if k in RIGHT_KEYPOINTS else "centre"
        ax.plot(kp[k, 0], kp[k, 1], "o", color=SIDE_COLORS[side], ms=markersize, mec="white", mew=0.6, zorder=4)
    return lines


def _people(kps, name: str) -> list[np.ndarray]:
    if hasattr(kps, "detach"):
        kps = kps.detach().cpu().numpy()
    if kps is None:
        return []
    if isinstance(kps, np.ndarray) and kps.ndim == 3:
        return [_keypoints(p, name) for p in kps]
    if isinstance(kps, np.ndarray) and kps.ndim == 2:
        return [_keypoints(kps, name)]
    if isinstance(kps, (list, tuple)):
        if len(kps) == NUM_KEYPOINTS and all(np.ndim(k) == 1 for k in kps):
            return [_keypoints(kps, name)]
        return [_keypoints(p, name) for p in kps]
    raise UserError(f"{name}: expected (P, 17, 3) keypoints or a list of (17, 3) arrays per image")


def show_pose(images, keypoints_per_image, path=None, score_thr: float = 0.2, ncols: int = 4,
              panel_width: float = 3.2, titles=None):
    """Images with their people's skeletons, in a grid of up to ``ncols`` columns. Returns the figure.

    ``keypoints_per_image[i]``: (P, 17, 3) or a list of (17, 3) arrays (one per person) for image i.
    """
    imgs = _as_list(images, "images", 3)
    kpl = list(keypoints_per_image)
    if not imgs:
        raise UserError("images: give at least one image")
    if len(kpl) != len(imgs):
        raise UserError(f"keypoints_per_image: {len(kpl)} entries for {len(imgs)} images")
    if not isinstance(ncols, int) or ncols < 1:
        raise UserError(f"ncols: expected an integer >= 1, got {ncols!r}")
    imgs = [as_image(im) for im in imgs]
    people = [_people(k, f"keypoints_per_image[{i}]") for i, k in enumerate(kpl)]
    ncols = min(ncols, len(imgs))
    nrows = math.ceil(len(imgs) / ncols)
    h, w = imgs[0].shape[:2]
    panel_h = float(np.clip(panel_width * h / w, 1.0, 2.5 * panel_width))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_width * ncols, panel_h * nrows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(imgs):
            ax.axis("off")
            continue
        ax.imshow(imgs[i])
        for kp in people[i]:
            draw_skeleton(ax, kp, score_thr)
        ax.set_xlim(-0.5, imgs[i].shape[1] - 0.5)
        ax.set_ylim(imgs[i].shape[0] - 0.5, -0.5)
        if titles is not None and i < len(titles):
            ax.set_title(str(titles[i]), fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / fig.get_size_inches()[1],
                        wspace=0.03, hspace=0.08)
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["COCO_SKELETON", "LEFT_KEYPOINTS", "RIGHT_KEYPOINTS", "SIDE_COLORS", "limb_side", "draw_skeleton",
           "show_pose"]
