"""Generic plots: metric vs. cost scatter (ours vs. the paper's) and training curves; atomic PNG saving.

- `save_figure(fig, path)` writes a PNG (dpi 120) through a temporary file + `os.replace`; every
  `path=` argument of `hrnas.viz` goes through it. Figures are saved at their own size (no tight
  bounding box), so a PNG is exactly `fig.get_size_inches() * 120` pixels.
- `metric_vs_cost(df, x, y, hue, label)`: seaborn scatter with a text label per point; points of the
  same label in different hue groups (e.g. "ours" and "paper") are joined by a dotted line.
- `training_curves(history, keys)`: one panel per key against the epoch (the trainer's `history.jsonl`
  rows), plus a MACs panel when the rows carry `macs` (searches).
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from hrnas.errors import UserError
from hrnas.io import atomic_path

DPI = 120
_X_KEYS = ("epoch", "step")
_MACS_KEY = "macs"


def save_figure(fig, path, dpi: int = DPI) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    if path is None or str(path) == "":
        raise UserError("path: give a file name for the PNG")
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return path


def _require_column(df: pd.DataFrame, column, param: str, optional: bool = False) -> None:
    if column is None and optional:
        return
    if column not in df.columns:
        raise UserError(f"{param}: column {column!r} is not in the table (columns: {', '.join(map(str, df.columns))})")


def metric_vs_cost(df: pd.DataFrame, x: str = "FLOPs (G)", y: str = "mIoU", hue: str | None = "source",
                   label: str | None = "method", path=None, title: str | None = None, ax=None):
    """Scatter of ``y`` against ``x`` coloured by ``hue``, each point labelled with its ``label``.

    Rows with a missing x or y are skipped. Returns the figure (saved as a PNG when ``path`` is given).
    """
    import seaborn as sns

    if not isinstance(df, pd.DataFrame):
        raise UserError(f"df: expected a pandas DataFrame, got {type(df).__name__}")
    _require_column(df, x, "x")
    _require_column(df, y, "y")
    _require_column(df, hue, "hue", optional=True)
    _require_column(df, label, "label", optional=True)
    data = df.copy()
    data[x] = pd.to_numeric(data[x], errors="coerce")
    data[y] = pd.to_numeric(data[y], errors="coerce")
    data = data[np.isfinite(data[x]) & np.isfinite(data[y])].reset_index(drop=True)
    if data.empty:
        raise UserError(f"df: no row has numeric values in both {x!r} and {y!r}")
    if hue is not None:
        data[hue] = data[hue].astype(str)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
    else:
        fig = ax.figure
    if hue is not None and label is not None:  # join the same method across sources (ours vs the paper's)
        for _, group in data.groupby(label, sort=False):
            if group[hue].nunique() > 1:
                ax.plot(group[x], group[y], ":", color="0.55", lw=1, zorder=1)
    sns.scatterplot(data=data, x=x, y=y, hue=hue, style=hue, s=70, ax=ax, zorder=3)
    if label is not None:
        for _, row in data.iterrows():
            ax.annotate(str(row[label]), (row[x], row[y]), xytext=(4, 4), textcoords="offset points",
                        fontsize=8, zorder=4)
    ax.grid(True, alpha=0.3)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title)
    ax.margins(x=0.12, y=0.12)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def training_curves(history: list[dict], keys=None, path=None, title: str | None = None):
    """Each of ``keys`` (losses/metrics) per epoch, one panel each, plus MACs when the rows have ``macs``.

    ``history``: a list of dicts (rows of the trainer's history); the x axis is ``epoch`` (else ``step``,
    else the row index). ``keys=None`` takes every ``*loss*`` and ``val_*`` key. Rows missing a key are skipped.
    """
    if isinstance(history, pd.DataFrame):
        history = history.to_dict("records")
    if not isinstance(history, (list, tuple)) or not history or not all(isinstance(r, dict) for r in history):
        raise UserError("history: expected a non-empty list of dicts (one per logged step/epoch)")
    available = []
    for row in history:
        for k, v in row.items():
            if k not in available and _number(v) is not None:
                available.append(k)
    if keys is None:
        keys = [k for k in available if "loss" in k or k.startswith("val_")]
        if not keys:
            raise UserError(f"keys: no loss or val_* key in history; give keys among {', '.join(available)}")
    elif isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    if not keys:
        raise UserError("keys: give at least one key to plot")
    for k in keys:
        if k not in available:
            raise UserError(f"keys: {k!r} has no numeric value in history (available: {', '.join(available)})")
    xkey = next((k for k in _X_KEYS if all(_number(r.get(k)) is not None for r in history)), None)
    panels = keys + ([_MACS_KEY] if _MACS_KEY in available and _MACS_KEY not in keys else [])
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        pts = [(_number(r[xkey]) if xkey else i, _number(r.get(key))) for i, r in enumerate(history)]
        pts = [(a, b) for a, b in pts if b is not None]
        xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        if key == _MACS_KEY:
            ax.plot(xs, ys / 1e6, color="tab:purple", drawstyle="steps-post")
            ax.set_ylabel("MACs (M)")
        else:
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, ms=3)
            ax.set_ylabel(key)
        ax.set_title(key if key != _MACS_KEY else "MACs")
        ax.set_xlabel(xkey or "record")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["DPI", "save_figure", "metric_vs_cost", "training_curves"]
