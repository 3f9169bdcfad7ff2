"""A grid of image panels, the layout the sample figures share (`seg.show_labels`, `pose.show_pose`,
`classification.show_images`): up to ``ncols`` columns, no ticks, the unused cells of the last row hidden."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt

from hrnas.errors import UserError


def image_grid(n: int, ncols: int, panel_width: float, panel_height: float, extra_height: float = 0.0):
    """A figure of ``n`` panels of ``panel_width`` x ``panel_height`` inches in rows of ``ncols`` (fewer when
    ``n`` is smaller), ``extra_height`` inches more for titles and legends; returns (figure, the n axes in
    reading order)."""
    if not isinstance(ncols, int) or isinstance(ncols, bool) or ncols < 1:
        raise UserError(f"ncols: expected an integer >= 1, got {ncols!r}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_width * ncols, panel_height * nrows + extra_height),
                             squeeze=False)
    cells = list(axes.flat)
    for ax in cells:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in cells[n:]:
        ax.axis("off")
    return fig, cells[:n]


__all__ = ["image_grid"]
