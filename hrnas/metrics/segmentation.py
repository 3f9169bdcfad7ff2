"""mIoU / mAcc / aAcc from a dataset-level confusion histogram (mmseg's definition,
docs/metrics-and-peers.md §2.2): pixels labelled ``ignore_index`` are dropped, the
histogram is accumulated over the whole dataset first, then IoU_c = I_c / U_c and
Acc_c = I_c / GT_c; mIoU and mAcc are nan-means over classes (a class with an empty union, or no
ground-truth pixel for Acc, is skipped) and aAcc = sum I_c / sum GT_c. Never per-image averages.
"""
from __future__ import annotations

import math

import torch

from hrnas.errors import UserError


class SegmentationMeter:
    """Confusion histogram ``hist[gt, pred]`` (int64, (C, C)); all-reduce ``hist`` across ranks."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device="cpu"):
        if num_classes < 1:
            raise UserError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.hist = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64,
                                device=device)

    def reset(self) -> None:
        self.hist.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add label maps ``pred`` and ``target`` (H x W or B x H x W integers, same shape)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape "
                             f"{tuple(target.shape)}")
        c = self.num_classes
        keep = target != self.ignore_index
        t = target[keep].to(torch.int64)
        p = pred[keep].to(torch.int64)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
            bad = int(t[(t < 0) | (t >= c)][0])
            raise UserError(f"segmentation label {bad} is outside [0, {c}) and is not the "
                            f"ignore index {self.ignore_index}")
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= c):
            bad = int(p[(p < 0) | (p >= c)][0])
            raise ValueError(f"predicted class {bad} is outside [0, {c})")
        counts = torch.bincount(t * c + p, minlength=c * c).reshape(c, c)
        self.hist += counts.to(self.hist.device)

    def merge(self, other: "SegmentationMeter") -> None:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.hist += other.hist.to(self.hist.device)

    def compute(self) -> dict:
        """``{"mIoU", "mAcc", "aAcc"}`` as fractions in [0, 1] and per-class ``"IoU"``, ``"Acc"``."""
        h = self.hist.to("cpu", torch.float64)
        inter = h.diag()
        gt_area, pred_area = h.sum(1), h.sum(0)
        union = gt_area + pred_area - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, math.nan))
        acc = torch.where(gt_area > 0, inter / gt_area.clamp(min=1),
                          torch.full_like(inter, math.nan))
        total = gt_area.sum().item()
        return {"mIoU": _nanmean(iou), "mAcc": _nanmean(acc),
                "aAcc": inter.sum().item() / total if total else math.nan,
                "IoU": iou.tolist(), "Acc": acc.tolist()}


def _nanmean(x: torch.Tensor) -> float:
    ok = ~torch.isnan(x)
    return x[ok].mean().item() if ok.any() else math.nan
