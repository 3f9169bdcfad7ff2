"""Per-task glue (loss, inference, evaluation); the experiment API behind ``hrnas search|train|eval`` is :mod:`hrnas.experiment`.

``get_task(cfg)`` returns the :class:`~hrnas.tasks.base.Task` of a loaded recipe: classification
(imagenet), segmentation (cityscapes, ade20k), keypoints (coco) or detection3d (kitti).
"""
from __future__ import annotations

import importlib

from hrnas.errors import UserError
from hrnas.tasks.base import Task

# task -> (module of hrnas.tasks, Task class): the registry get_task reads (modules imported on first use)
REGISTRY = {"imagenet": ("classification", "ClassificationTask"), "cityscapes": ("segmentation", "SegmentationTask"),
            "ade20k": ("segmentation", "SegmentationTask"), "coco": ("keypoints", "KeypointsTask"),
            "kitti": ("detection3d", "Detection3DTask")}
FAMILIES = {task: module for task, (module, _) in REGISTRY.items()}


def get_task(cfg: dict) -> Task:
    """The task object for a recipe (``cfg["task"]`` names the dataset)."""
    name = cfg.get("task")
    if name not in REGISTRY:
        raise UserError(f"unknown task {name!r}; accepted: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(f"hrnas.tasks.{module}"), cls)(cfg)


__all__ = ["FAMILIES", "REGISTRY", "Task", "get_task"]
