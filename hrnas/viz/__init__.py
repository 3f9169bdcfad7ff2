"""Figures and tables: architecture report (`arch`), segmentation maps (`seg`), pose skeletons (`pose`),
point clouds with 3-D boxes (`pointcloud`), classification samples and confusion matrices
(`classification`), metric/cost, training and search plots (`plots`), tables (`tables`).

The names below are imported lazily (on first use), so `hrnas.viz.tables` does not pull in matplotlib.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "arch": ("arch_table", "arch_summary", "draw_architecture"),
    "seg": ("CITYSCAPES_PALETTE", "ade20k_palette", "colorize", "denormalize", "overlay", "show_labels",
            "show_segmentation"),
    "pose": ("COCO_SKELETON", "draw_skeleton", "show_pose", "show_pose_comparison"),
    "pointcloud": ("box_corners", "height_colors", "project_boxes", "render_open3d", "render_open3d_image",
                   "render_matplotlib", "render_detections", "show_kitti_frame"),
    "classification": ("confusion_matrix", "show_images", "show_topk", "plot_confusion_matrix"),
    "plots": ("save_figure", "metric_vs_cost", "training_curves", "search_curves"),
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
