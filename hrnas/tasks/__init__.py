"""Per-task glue (loss, inference, evaluation) and the experiment runner behind ``hrnas search|train|eval``.

``get_task(cfg)`` returns the :class:`~hrnas.tasks.base.Task` of a loaded recipe: classification
(imagenet), segmentation (cityscapes, ade20k), keypoints (coco) or detection3d (kitti).
"""
from __future__ import annotations

from hrnas.errors import UserError
from hrnas.tasks.base import Task

FAMILIES = {"imagenet": "classification", "cityscapes": "segmentation", "ade20k": "segmentation",
            "coco": "keypoints", "kitti": "detection3d"}


def get_task(cfg: dict) -> Task:
    """The task object for a recipe (``cfg["task"]`` names the dataset)."""
    name = cfg.get("task")
    if name not in FAMILIES:
        raise UserError(f"unknown task {name!r}; accepted: {', '.join(FAMILIES)}")
    family = FAMILIES[name]
    if family == "classification":
        from hrnas.tasks.classification import ClassificationTask as cls
    elif family == "segmentation":
        from hrnas.tasks.segmentation import SegmentationTask as cls
    elif family == "keypoints":
        from hrnas.tasks.keypoints import KeypointsTask as cls
    else:
        from hrnas.tasks.detection3d import Detection3DTask as cls
    return cls(cfg)


__all__ = ["FAMILIES", "Task", "get_task"]
