"""Human pose skeletons (supplement Fig. 3): COCO's 17 keypoints and 19 limbs drawn on images.

Keypoints are (17, 3) arrays of (x, y, score) in image pixels (score = visibility or confidence); a
keypoint below ``score_thr`` is not drawn, nor are its limbs. Left limbs are blue, right limbs orange,
the centre ones (eyes, shoulders, hips, nose) green, each with a white outline so that it stands out
from the image. `show_pose_comparison` draws our skeletons and the ground truth's side by side on
dimmed copies of each image (``dim``), each person's box outlined and numbered.
"""
from __future__ import annotations

import math

import numpy as np

import matplotlib.patheffects as pe
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from hrnas.errors import UserError
from hrnas.viz.grid import image_grid
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
                              lw=linewidth, solid_capstyle="round", zorder=3,
                              path_effects=[pe.Stroke(linewidth=linewidth + 1.6, foreground="white"), pe.Normal()])
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
              panel_width: float = 3.2, titles=None, dim: float = 0.0):
    """Images with their people's skeletons, in a grid of up to ``ncols`` columns. Returns the figure.

    ``keypoints_per_image[i]``: (P, 17, 3) or a list of (17, 3) arrays (one per person) for image i;
    ``dim``: how much the images are faded to grey under the skeletons (0 = not at all).
    """
    imgs = _as_list(images, "images", 3)
    kpl = list(keypoints_per_image)
    if not imgs:
        raise UserError("images: give at least one image")
    if len(kpl) != len(imgs):
        raise UserError(f"keypoints_per_image: {len(kpl)} entries for {len(imgs)} images")
    imgs = [dim_image(im, dim) if dim else as_image(im) for im in imgs]
    people = [_people(k, f"keypoints_per_image[{i}]") for i, k in enumerate(kpl)]
    h, w = imgs[0].shape[:2]
    panel_h = float(np.clip(panel_width * h / w, 1.0, 2.5 * panel_width))
    fig, axes = image_grid(len(imgs), ncols, panel_width, panel_h, 0.3)
    for i, ax in enumerate(axes):
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


def dim_image(image, amount: float = 0.5) -> np.ndarray:
    """HxWx3 uint8: ``image`` blended with mid-grey by ``amount`` (0 = unchanged), so skeletons drawn
    over it stand out even where the image has the skeleton's own colours."""
    if not 0.0 <= amount <= 1.0:
        raise UserError(f"dim: expected a number in 0..1, got {amount!r}")
    img = as_image(image, "image").astype(np.float64)
    return ((1.0 - amount) * img + amount * 160.0 + 0.5).astype(np.uint8)


def _person_box(kp: np.ndarray, thr: float):
    pts = kp[(kp[:, 2] >= thr) & np.all(np.isfinite(kp), axis=1), :2]
    if len(pts) < 2:
        return None
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    pad = 0.08 * max(x1 - x0, y1 - y0, 8.0)
    return x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad


def match_people(preds, gts, gt_thr: float = 0.5) -> list[int | None]:
    """For each predicted person, the index of the ground-truth person it stands for (greedy, closest mean
    distance over the keypoints the ground truth labels first), or None when there are more predictions."""
    pairs = []
    for i, p in enumerate(preds):
        for j, g in enumerate(gts):
            seen = g[:, 2] >= gt_thr
            if seen.any():
                pairs.append((float(np.linalg.norm(p[seen, :2] - g[seen, :2], axis=1).mean()), i, j))
    match: list[int | None] = [None] * len(preds)
    taken = set()
    for _, i, j in sorted(pairs):
        if match[i] is None and j not in taken:
            match[i] = j
            taken.add(j)
    return match


def _number_person(ax, box, number: int, width: int, height: int) -> None:
    """The person's box (dashed) and its number in the box's top-left corner, kept inside the image."""
    ax.add_patch(Rectangle(box[:2], box[2], box[3], fill=False, ec="black", lw=0.8, ls="--", zorder=2))
    x = float(np.clip(box[0], 0, width - 1)) + 1
    y = float(np.clip(box[1], 0, height - 1)) + 1
    ax.text(x, y, str(number), fontsize=7, va="top", ha="left", zorder=5, clip_on=True,
            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"})


def show_pose_comparison(images, preds, gts, path=None, score_thr: float = 0.0, gt_thr: float = 0.5,
                         titles=None, title: str | None = None, dim: float = 0.5, panel_width: float = 3.6):
    """One row per image: our skeletons | the ground truth's, on dimmed copies of the image. Returns the figure.

    ``preds[i]`` / ``gts[i]``: the people of image i ((P, 17, 3) or a list of (17, 3)); a predicted keypoint
    is drawn when its confidence is >= ``score_thr``, a ground-truth one when its visibility is >= ``gt_thr``
    (COCO: 0 unlabelled, 1 labelled but hidden, 2 visible). Each person's keypoints are boxed and numbered,
    a prediction with the number of the ground-truth person it is closest to (:func:`match_people`).
    """
    imgs = [as_image(im) for im in _as_list(images, "images", 3)]
    if not imgs:
        raise UserError("images: give at least one image")
    pr, gt = list(preds), list(gts)
    if len(pr) != len(imgs) or len(gt) != len(imgs):
        raise UserError(f"preds, gts: {len(pr)} and {len(gt)} entries for {len(imgs)} images")
    columns = (("ours", [_people(p, f"preds[{i}]") for i, p in enumerate(pr)], score_thr),
               ("ground truth", [_people(g, f"gts[{i}]") for i, g in enumerate(gt)], gt_thr))
    h, w = imgs[0].shape[:2]
    panel_h = float(np.clip(panel_width * h / w, 1.0, 2.5 * panel_width))
    head_h, title_h, row_h = 0.3, (0.4 if title else 0.0), 0.25
    n = len(imgs)
    fig, axes = plt.subplots(n, 2, figsize=(2 * panel_width, (panel_h + row_h) * n + head_h + title_h), squeeze=False)
    for r in range(n):
        shown = dim_image(imgs[r], dim)
        match = match_people(columns[0][1][r], columns[1][1][r], gt_thr)
        spare = iter(range(len(columns[1][1][r]) + 1, len(columns[1][1][r]) + len(match) + 1))
        numbers = ([j + 1 if j is not None else next(spare) for j in match],
                   list(range(1, len(columns[1][1][r]) + 1)))
        for c, (label, people, thr) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(shown)
            for number, kp in zip(numbers[c], people[r]):
                box = _person_box(kp, thr)
                if box is not None:
                    _number_person(ax, box, number, imgs[r].shape[1], imgs[r].shape[0])
                draw_skeleton(ax, kp, thr)
            ax.set_xlim(-0.5, imgs[r].shape[1] - 0.5)
            ax.set_ylim(imgs[r].shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            text = f"{label}: {len(people[r])} {'person' if len(people[r]) == 1 else 'people'}"
            if c == 0:  # how much of ours the confidence threshold lets through
                shown_kp = sum(int((kp[:, 2] >= thr).sum()) for kp in people[r])
                text += f", {shown_kp} of {NUM_KEYPOINTS * len(people[r])} keypoints >= {thr:g}"
            if titles is not None and r < len(titles):
                text = f"{titles[r]} · {text}"
            ax.set_title(text, fontsize=8)
    total_h = fig.get_size_inches()[1]
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / total_h, va="top")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - (head_h + title_h) / total_h, wspace=0.03,
                        hspace=row_h / panel_h + 0.02)
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["COCO_SKELETON", "LEFT_KEYPOINTS", "RIGHT_KEYPOINTS", "SIDE_COLORS", "limb_side", "draw_skeleton",
           "dim_image", "match_people", "show_pose", "show_pose_comparison"]
