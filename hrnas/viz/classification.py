"""Image classification figures: labelled sample images, top-k predictions and the confusion matrix.

- `show_images(images, labels, class_names)`: a grid of images titled with their class names.
- `show_topk(images, probs, labels, class_names, k)`: each image beside a bar chart of its k most
  probable classes; the true class's bar is green, the others grey, and the title says whether the
  top-1 guess was right.
- `confusion_matrix(labels, preds, num_classes)`: counts, rows = true class, columns = predicted class.
- `plot_confusion_matrix(cm, class_names)`: the matrix as a heatmap, each cell with its count, rows
  normalised to the share of that class's images.
"""
from __future__ import annotations

import math

import numpy as np

import matplotlib.pyplot as plt

from hrnas.errors import UserError
from hrnas.viz.grid import image_grid
from hrnas.viz.plots import save_figure
from hrnas.viz.seg import _as_list, as_image

RIGHT_COLOR = "#2ca02c"
WRONG_COLOR = "#d62728"
OTHER_COLOR = "0.65"


def _labels(labels, n: int, num_classes: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"{name}: expected {n} integer class indices, got shape {arr.shape} dtype {arr.dtype}")
    if n and (arr.min() < 0 or arr.max() >= num_classes):
        raise UserError(f"{name}: class indices must be in 0..{num_classes - 1}, found {int(arr.min())}..{int(arr.max())}")
    return arr.astype(np.int64)


def _names(class_names, num_classes: int | None = None) -> list[str]:
    names = [str(c) for c in class_names]
    if not names:
        raise UserError("class_names: give at least one class name")
    if num_classes is not None and len(names) != num_classes:
        raise UserError(f"class_names: {len(names)} names for {num_classes} classes")
    return names


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: entry [t, p] = images of class t predicted as p."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes: expected an integer >= 1, got {num_classes!r}")
    t = np.asarray(labels)
    t = _labels(t, len(t), num_classes, "labels")
    p = _labels(preds, len(t), num_classes, "preds")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def show_images(images, labels, class_names, path=None, ncols: int = 5, panel_width: float = 1.8,
                title: str | None = None):
    """A grid of images (HxWx3 uint8 or normalised 3xHxW), each titled with its class name. Returns the figure."""
    imgs = [as_image(im) for im in _as_list(images, "images", 3)]
    if not imgs:
        raise UserError("images: give at least one image")
    names = _names(class_names)
    lab = _labels(labels, len(imgs), len(names), "labels")
    title_h = 0.4 if title else 0.0
    fig, axes = image_grid(len(imgs), ncols, panel_width, panel_width + 0.3, title_h)
    for ax, img, label in zip(axes, imgs, lab):
        ax.imshow(img)
        ax.set_title(names[label], fontsize=9)
    total_h = fig.get_size_inches()[1]
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / total_h, va="top")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - (0.3 + title_h) / total_h, wspace=0.05,
                        hspace=0.3 / panel_width)
    if path is not None:
        save_figure(fig, path)
    return fig


def show_topk(images, probs, labels, class_names, k: int = 3, path=None, ncols: int = 4,
              title: str | None = None):
    """Each image beside a bar chart of its ``k`` most probable classes (``probs``: (N, C) probabilities).

    The true class's bar is green; the panel title gives the true class and is green when the top-1
    guess is right, red when it is wrong. Returns the figure.
    """
    imgs = [as_image(im) for im in _as_list(images, "images", 3)]
    if not imgs:
        raise UserError("images: give at least one image")
    pr = np.asarray(probs, dtype=np.float64)
    if pr.ndim != 2 or len(pr) != len(imgs):
        raise UserError(f"probs: expected ({len(imgs)}, classes) probabilities, got shape {pr.shape}")
    names = _names(class_names, pr.shape[1])
    lab = _labels(labels, len(imgs), len(names), "labels")
    if not isinstance(k, int) or not 1 <= k <= len(names):
        raise UserError(f"k: expected an integer in 1..{len(names)}, got {k!r}")
    ncols = min(ncols, len(imgs))
    nrows = math.ceil(len(imgs) / ncols)
    title_h = 0.4 if title else 0.0
    fig = plt.figure(figsize=(3.6 * ncols, 1.9 * nrows + title_h))
    total_h = fig.get_size_inches()[1]
    grid = fig.add_gridspec(nrows, 2 * ncols, width_ratios=[1.0, 1.4] * ncols, left=0.01, right=0.99, bottom=0.04,
                            top=1 - (0.35 + title_h) / total_h, wspace=0.15, hspace=0.55)
    for i, img in enumerate(imgs):
        r, c = divmod(i, ncols)
        ax_img = fig.add_subplot(grid[r, 2 * c])
        ax_img.imshow(img)
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        top = np.argsort(-pr[i], kind="stable")[:k]
        right = top[0] == lab[i]
        ax_img.set_title(f"true: {names[lab[i]]}", fontsize=8, color=RIGHT_COLOR if right else WRONG_COLOR)
        ax_bar = fig.add_subplot(grid[r, 2 * c + 1])
        ax_bar.barh(np.arange(k), pr[i, top], color=[RIGHT_COLOR if t == lab[i] else OTHER_COLOR for t in top])
        ax_bar.set_yticks(np.arange(k), [names[t] for t in top], fontsize=7)
        ax_bar.invert_yaxis()
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=6)
        ax_bar.set_title(f"top-{k}: {'right' if right else 'wrong'}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / total_h, va="top")
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_confusion_matrix(cm, class_names, path=None, title: str | None = None):
    """The confusion matrix (true class down, predicted class across): colour = the share of the true
    class's images (row-normalised), text = the count. Returns the figure."""
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.issubdtype(m.dtype, np.integer) or (m < 0).any():
        raise UserError(f"cm: expected a square matrix of non-negative counts, got shape {m.shape} dtype {m.dtype}")
    names = _names(class_names, m.shape[0])
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=np.float64), where=rows > 0)
    side = 0.5 * len(names) + 2.2
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for t in range(len(names)):
        for p in range(len(names)):
            if m[t, p]:
                ax.text(p, t, str(int(m[t, p])), ha="center", va="center", fontsize=7,
                        color="white" if share[t, p] > 0.6 else "black")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(m) / max(int(m.sum()), 1)
    ax.set_title((title + "\n" if title else "") + f"{int(m.sum())} images, top-1 {100 * accuracy:.1f} %", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["confusion_matrix", "show_images", "show_topk", "plot_confusion_matrix"]
