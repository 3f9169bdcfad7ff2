"""Generic plots: metric vs. cost scatter (ours vs. the paper's) and training curves; atomic PNG saving.

- `save_figure(fig, path)` writes a PNG (dpi 120) through a temporary file + `os.replace`; every
  `path=` argument of `hrnas.viz` goes through it. Figures are saved at their own size (no tight
  bounding box), so a PNG is exactly `fig.get_size_inches() * 120` pixels.
- `metric_vs_cost(df, x, y, hue, label)`: seaborn scatter with a text label per point; points of the
  same label in different hue groups (e.g. "ours" and "paper") are joined by a dotted line.
- `training_curves(history, keys)`: one panel per key against the epoch (the trainer's `history.jsonl`
  rows), plus a MACs panel when the rows carry `macs` (searches).
- `dodge_log(x)`: positions for points on a log x axis, near-equal values spread side by side.
- `search_curves(steps, epochs, metric)`: a search as four panels against the step: the task loss, the
  resource-aware L1 penalty (which dwarfs the task loss, so the two never share an axis), the MACs of
  the live network and the validation metric, with the shrinking steps marked.
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


def dodge_log(x, width: float = 0.05) -> np.ndarray:
    """Positions for positive values on a log axis, values that would overlap drawn side by side: a run of
    values (in ascending order) each less than ``width`` decades above the previous one is spread ``width``
    decades apart, in their order, around their own values (two: ×10^∓width/2); other values stay."""
    x = np.asarray(x, dtype=float)
    out = x.copy()
    order = np.argsort(x, kind="stable")
    logs = np.log10(x[order])
    groups, current = [], [order[0]] if len(order) else []
    for i, gap in zip(order[1:], np.diff(logs)):
        if gap < width:
            current.append(i)
        else:
            groups.append(current)
            current = [i]
    groups.append(current)
    for group in groups:
        for rank, i in enumerate(group):
            out[i] = x[i] * 10 ** (width * (rank - (len(group) - 1) / 2))
    return out


def label_points(ax, x: list, y: list, names: list, gap: float = 0.075) -> None:
    """Each point's label to its right, past the points less than 0.3 decades to its right, the labels
    stacked by height at least ``gap`` of the y range apart (so none overlap, however close the points);
    a thin line joins a moved label to its point."""
    lo, hi = ax.get_ylim()
    step, last = (hi - lo) * gap, -math.inf
    for yi, xi, name in sorted(zip(y, x, names)):
        ly, lx = max(yi, last + step), 1.3 * max(xj for xj in x if xi <= xj < xi * 10 ** 0.3)
        last = ly
        ax.annotate(name, (xi, yi), xytext=(lx, ly), textcoords="data", fontsize=8, va="center",
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="grey") if ly > yi or lx > 1.3 * xi else None)
    if math.isfinite(last):  # room for the highest label, and for the rightmost (~0.4 decades of text)
        ax.set_ylim(lo, max(hi, last + step))
        ax.set_xlim(right=max(ax.get_xlim()[1], 1.3 * max(x) * 10 ** 0.4))


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


def _series(rows, key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(_number(r.get("step")), _number(r.get(key))) for r in rows]
    pts = [(a, b) for a, b in pts if a is not None and b is not None]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def search_curves(steps, epochs, metric: str | None = None, path=None, title: str | None = None):
    """A search (or a retraining) as panels against the training step; returns the figure.

    ``steps``: rows of ``steps.jsonl`` (every ``train.log_interval`` steps: ``task_loss``, ``penalty``,
    ``l2``, ...); ``epochs``: rows of ``metrics.jsonl`` (per epoch and evaluation: ``train_task_loss``,
    ``macs``, ``val_*``, ``removed_channels`` at a shrink). Panels, each where its data exists: the task
    loss (per step, else per epoch), the L1 penalty (and the coupled L2 term), the MACs and
    ``val_<metric>`` (default: the rows' ``val_main``). Dotted verticals mark the steps that shrank the network.
    """
    steps, epochs = list(steps or []), list(epochs or [])
    for name, rows in (("steps", steps), ("epochs", epochs)):
        if not all(isinstance(r, dict) for r in rows):
            raise UserError(f"{name}: expected a list of dicts (rows of the run's JSONL logs)")
    if not steps and not epochs:
        raise UserError("steps, epochs: both are empty; give the rows of steps.jsonl and/or metrics.jsonl")
    if metric is None:
        metric = next((r["val_main"] for r in reversed(epochs) if isinstance(r.get("val_main"), str)), None)
    panels = []  # (title, ylabel, [(x, y, label, style)])
    loss_rows, loss_key = (steps, "task_loss") if any(_number(r.get("task_loss")) is not None for r in steps) \
        else (epochs, "train_task_loss")
    x, y = _series(loss_rows, loss_key)
    if len(x):
        panels.append(("task loss", "loss", [(x, y, None, "-")]))
    terms = [(*_series(steps, key), label, style) for key, label, style in
             (("penalty", "L1 penalty (search)", "-"), ("l2", "L2 weight decay", "--"))]
    terms = [t for t in terms if len(t[0])]
    if terms:
        panels.append(("penalty terms", "added to the loss", terms))
    x, y = _series(epochs, _MACS_KEY)
    if len(x):
        panels.append(("MACs of the live network", "MACs (M)", [(x, y / 1e6, None, "steps")]))
    if metric is not None:
        x, y = _series(epochs, f"val_{metric}")
        if len(x):
            panels.append((f"validation {metric}", metric, [(x, y, None, "o-")]))
    if not panels:
        raise UserError("steps, epochs: no task loss, penalty, macs or val_* values to plot")
    cuts = sorted({_number(r.get("step")) for r in epochs if (_number(r.get("removed_channels")) or 0) > 0
                   or (_number(r.get("removed_tokens")) or 0) > 0} - {None})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.3), squeeze=False)
    for ax, (name, ylabel, lines) in zip(axes.flat, panels):
        for cut in cuts:
            ax.axvline(cut, color="0.6", ls=":", lw=1, zorder=1)
        for xs, ys, label, style in lines:
            if style == "steps":
                ax.plot(xs, ys, color="tab:purple", drawstyle="steps-post", label=label, zorder=2)
            elif style == "o-":
                ax.plot(xs, ys, "o-", ms=3, color="tab:green", label=label, zorder=2)
            else:
                ax.plot(xs, ys, style, lw=1.2, label=label, zorder=2)
        if any(label for *_, label, _ in lines):
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title + (" (dotted: shrinking steps)" if cuts else ""), fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["DPI", "save_figure", "metric_vs_cost", "training_curves", "search_curves"]
