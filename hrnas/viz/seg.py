"""Segmentation maps (supplement Fig. 2): palettes, colourised masks and image | prediction | GT grids.

- `CITYSCAPES_PALETTE`: the 19 train-id colours of the official Cityscapes label table (the same as
  `hrnas.data.labels.CITYSCAPES_LABELS`); `ade20k_palette()`: the 150 colours of mmseg's ADE20K table
  (class i = annotation value i + 1, i.e. after `reduce_zero_label`).
- `colorize(mask, palette)`: train ids → RGB; 255 (ignore) is black.
- `denormalize(chw, mean, std)`: a network input (ImageNet-normalised CHW) back to HxWx3 uint8.
- `overlay(image, mask, palette, alpha)`: the label colours blended over the image (ignore pixels untouched).
- `show_labels(images, masks)`: a dataset's samples as a person looks at them, labels over the images.
- `show_segmentation(images, preds, gts)`: one row per sample, with a legend of the classes shown; a
  ``title`` gets its own band above the column headers.
"""
from __future__ import annotations

import numpy as np

import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from hrnas.errors import UserError
from hrnas.viz.grid import image_grid
from hrnas.viz.plots import save_figure

# Kept here (not imported from hrnas.data, which loads torch): tests check they equal hrnas.data's.
IGNORE = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Train ids 0..18 of the official Cityscapes label table (cityscapesscripts labels.py).
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)
CITYSCAPES_PALETTE.setflags(write=False)

_ADE20K = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)
_NAMED = {"cityscapes": lambda: CITYSCAPES_PALETTE, "ade20k": lambda: ade20k_palette()}
_MAX_LEGEND = 24


def _class_names(palette) -> tuple[str, ...] | None:
    if not isinstance(palette, str):
        return None
    from hrnas.data import labels  # lazily: hrnas.data imports torch

    return labels.CITYSCAPES_CLASSES if palette == "cityscapes" else tuple(c.strip() for c in labels.ADE20K_CLASSES)


def ade20k_palette() -> np.ndarray:
    """The 150 ADE20K class colours (150, 3) uint8, in class order (mmseg's table)."""
    return np.array(_ADE20K, dtype=np.uint8)


def get_palette(palette) -> np.ndarray:
    """A palette name ("cityscapes" | "ade20k") or an (N, 3) array of RGB values → (N, 3) uint8."""
    if isinstance(palette, str):
        if palette not in _NAMED:
            raise UserError(f"palette: unknown palette {palette!r}; accepted: {', '.join(_NAMED)} or an (N, 3) array")
        return _NAMED[palette]()
    arr = np.asarray(palette)
    if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0 or arr.min() < 0 or arr.max() > 255:
        raise UserError(f"palette: expected an (N, 3) array of RGB values in 0..255, got shape {arr.shape}")
    return arr.astype(np.uint8)


def _to_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as err:  # noqa: BLE001 - any unconvertible object
        raise UserError(f"{name}: cannot be read as an array ({err})") from None


def colorize(mask, palette="cityscapes") -> np.ndarray:
    """An HxW map of class ids → HxWx3 uint8 RGB via ``palette``; 255 (ignore) → black."""
    pal = get_palette(palette)
    m = _to_numpy(mask, "mask")
    if m.ndim != 2:
        raise UserError(f"mask: expected an HxW map of class ids, got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.integer):
        if not np.issubdtype(m.dtype, np.floating) or not np.all(np.isfinite(m)) or np.any(m != np.round(m)):
            raise UserError(f"mask: expected integer class ids, got dtype {m.dtype} with non-integer values")
    m = m.astype(np.int64)
    bad = (m != IGNORE) & ((m < 0) | (m >= len(pal)))
    if bad.any():
        raise UserError(f"mask: class ids must be in 0..{len(pal) - 1} or {IGNORE} (ignore); "
                        f"found {int(m[bad][0])}")
    out = np.zeros(m.shape + (3,), dtype=np.uint8)
    valid = m != IGNORE
    out[valid] = pal[m[valid]]
    return out


def denormalize(tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A normalised CHW image (torch or numpy) → HxWx3 uint8: ``x * std + mean``, scaled to 0..255."""
    x = _to_numpy(tensor, "tensor").astype(np.float64)
    if x.ndim != 3 or x.shape[0] != len(mean) or len(mean) != len(std):
        raise UserError(f"tensor: expected a {len(mean)}xHxW normalised image, got shape {x.shape}")
    x = x * np.asarray(std, dtype=np.float64)[:, None, None] + np.asarray(mean, dtype=np.float64)[:, None, None]
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def as_image(image, name: str = "images") -> np.ndarray:
    """HxWx3 uint8 from an HxWx3 uint8 array or a normalised 3xHxW tensor/array (ImageNet mean/std)."""
    x = _to_numpy(image, name)
    if x.ndim == 3 and x.shape[-1] == 3 and x.dtype == np.uint8:
        return x
    if x.ndim == 3 and x.shape[0] == 3 and np.issubdtype(x.dtype, np.floating):
        return denormalize(x)
    if x.ndim == 2 and x.dtype == np.uint8:
        return np.repeat(x[..., None], 3, axis=-1)
    raise UserError(f"{name}: expected HxWx3 uint8 images or normalised 3xHxW float tensors, "
                    f"got shape {x.shape} dtype {x.dtype}")


def _as_mask(mask, n_classes: int, name: str) -> np.ndarray:
    m = _to_numpy(mask, name)
    if m.ndim == 3 and m.shape[0] == n_classes:  # logits / scores (C, H, W)
        m = m.argmax(axis=0)
    if m.ndim != 2:
        raise UserError(f"{name}: expected HxW class-id maps (or CxHxW scores), got shape {m.shape}")
    return m


def _as_list(x, name: str, sample_ndim: int) -> list:
    """A list of samples, a batch (ndim > ``sample_ndim``) or a single sample (ndim == ``sample_ndim``)."""
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    ndim = getattr(x, "ndim", None)
    if ndim == sample_ndim:
        return [x]
    if ndim is not None and ndim > sample_ndim:
        return [x[i] for i in range(x.shape[0])]
    raise UserError(f"{name}: expected a list (or a batch) of samples")


def overlay(image, mask, palette="cityscapes", alpha: float = 0.55) -> np.ndarray:
    """HxWx3 uint8: the colours of ``mask`` (class ids, 255 = ignore) blended over ``image`` with weight
    ``alpha``; ignored pixels keep the image."""
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha: expected a number in 0..1, got {alpha!r}")
    img = as_image(image, "image")
    m = _to_numpy(mask, "mask")
    if m.shape != img.shape[:2]:
        raise UserError(f"mask: shape {m.shape} differs from the image's {img.shape[:2]}")
    colours = colorize(m, palette).astype(np.float64)
    out = img.astype(np.float64)
    valid = m != IGNORE
    out[valid] = (1.0 - alpha) * out[valid] + alpha * colours[valid]
    return (out + 0.5).astype(np.uint8)


def _legend_handles(palette, pal, masks) -> list:
    present = sorted({int(c) for m in masks for c in np.unique(m) if c != IGNORE and 0 <= c < len(pal)})
    if not present or len(present) > _MAX_LEGEND:
        return []
    names = _class_names(palette)
    return [Patch(facecolor=pal[c] / 255.0, edgecolor="0.3", label=names[c] if names else str(c)) for c in present]


def show_labels(images, masks, palette="cityscapes", path=None, titles=None, title: str | None = None,
                ncols: int = 3, alpha: float = 0.55, panel_width: float = 3.6):
    """Samples of a segmentation dataset: each image with its label map blended over it, in a grid of up
    to ``ncols`` columns, and a legend of the classes present. Returns the figure."""
    pal = get_palette(palette)
    imgs = [as_image(im) for im in _as_list(images, "images", 3)]
    labels = [_as_mask(m, len(pal), "masks") for m in _as_list(masks, "masks", 2)]
    if not imgs:
        raise UserError("images: give at least one image")
    if len(labels) != len(imgs):
        raise UserError(f"masks: {len(labels)} label maps for {len(imgs)} images")
    h, w = imgs[0].shape[:2]
    panel_h = float(np.clip(panel_width * h / w, 1.2, 2.0 * panel_width))
    handles = _legend_handles(palette, pal, labels)
    legend_h = (0.28 * int(np.ceil(len(handles) / 6)) + 0.15) if handles else 0.0
    title_h = 0.4 if title else 0.0
    head_h = 0.3 if titles is not None else 0.05
    fig, axes = image_grid(len(imgs), ncols, panel_width, panel_h + head_h, title_h + legend_h)
    for i, ax in enumerate(axes):
        ax.imshow(overlay(imgs[i], labels[i], pal, alpha), interpolation="nearest")
        if titles is not None and i < len(titles):
            ax.set_title(str(titles[i]), fontsize=9)
    total_h = fig.get_size_inches()[1]
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / total_h, va="top")
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - (title_h + head_h) / total_h,
                        bottom=(legend_h + 0.05) / total_h, wspace=0.04, hspace=head_h / panel_h)
    if path is not None:
        save_figure(fig, path)
    return fig


def show_segmentation(images, preds, gts=None, palette="cityscapes", path=None, titles=None,
                      legend: bool = True, panel_width: float = 3.6, title: str | None = None):
    """Rows = samples; columns image | prediction | ground truth (when ``gts``). Returns the figure.

    ``images``: HxWx3 uint8 or normalised 3xHxW tensors; ``preds``/``gts``: HxW class ids (255 = ignore)
    or CxHxW scores; ``palette``: "cityscapes" | "ade20k" | an (N, 3) array; ``title``: a figure title,
    drawn in a band of its own above the column headers.
    """
    pal = get_palette(palette)
    imgs = [as_image(im) for im in _as_list(images, "images", 3)]
    prs = [_as_mask(p, len(pal), "preds") for p in _as_list(preds, "preds", 2)]
    gtl = [_as_mask(g, len(pal), "gts") for g in _as_list(gts, "gts", 2)]
    if not imgs:
        raise UserError("images: give at least one image")
    if len(prs) != len(imgs) or (gts is not None and len(gtl) != len(imgs)):
        raise UserError(f"preds: {len(prs)} predictions (and {len(gtl)} ground truths) for {len(imgs)} images")
    columns = [("image", imgs), ("prediction", [colorize(p, pal) for p in prs])]
    if gtl:
        columns.append(("ground truth", [colorize(g, pal) for g in gtl]))
    h, w = imgs[0].shape[:2]
    panel_h = float(np.clip(panel_width * h / w, 1.2, 2.0 * panel_width))
    handles = _legend_handles(palette, pal, prs + gtl) if legend else []
    legend_h = (0.28 * int(np.ceil(len(handles) / 6)) + 0.15) if handles else 0.0
    title_h = 0.4 if title else 0.0
    n = len(imgs)
    fig, axes = plt.subplots(n, len(columns), figsize=(panel_width * len(columns),
                                                       panel_h * n + 0.35 + title_h + legend_h), squeeze=False)
    for r in range(n):
        for c, (label, items) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(items[r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=10)
        if titles is not None and r < len(titles):
            axes[r, 0].set_ylabel(str(titles[r]), fontsize=9)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
    total_h = fig.get_size_inches()[1]
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / total_h, va="top")
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - (0.35 + title_h) / total_h, bottom=(legend_h + 0.05) / total_h,
                        wspace=0.04, hspace=0.04)
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["CITYSCAPES_PALETTE", "ade20k_palette", "get_palette", "colorize", "denormalize", "as_image",
           "overlay", "show_labels", "show_segmentation"]
