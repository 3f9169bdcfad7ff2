"""Figures and tables: architecture report (`arch`), segmentation maps (`seg`), pose skeletons (`pose`),
point clouds with 3-D boxes (`pointcloud`), metric/cost and training plots (`plots`), tables (`tables`).

The names below are imported lazily (on first use), so `hrnas.viz.tables` does not pull in matplotlib.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "arch": ("arch_table", "arch_summary", "draw_architecture"),
    "seg": ("CITYSCAPES_PALETTE", "ade20k_palette", "colorize", "denormalize", "show_segmentation"),
    "pose": ("COCO_SKELETON", "draw_skeleton", "show_pose"),
    "pointcloud": ("box_corners", "render_open3d", "render_matplotlib", "render_detections"),
    "plots": ("save_figure", "metric_vs_cost", "training_curves"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
