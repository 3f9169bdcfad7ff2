"""Single-scale anchor head of PointPillars (§2.3), as configured in OpenPCDet's ``pointpillar.yaml``.

Per BEV location and class: two anchors (yaw 0 and π/2). 1×1 convolutions predict sigmoid class
scores, 7 box residuals (:class:`~hrnas.models.box_coder.ResidualCoder`) and 2 direction bins.
Targets come from axis-aligned BEV IoU matching with per-class thresholds; losses are the sigmoid
focal loss, smooth-L1 with the sin-difference angle trick and the direction cross-entropy, all
normalised by the number of positive anchors (peers-and-metrics §4.1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou, sigmoid_focal_loss

from hrnas.errors import UserError
from hrnas.models.box_coder import ResidualCoder, limit_period, nearest_bev_rect


@dataclass(frozen=True)
class AnchorSpec:
    """Anchor size (l, w, h) in metres, anchor bottom z, and the BEV IoU matching thresholds."""

    size: tuple[float, float, float]
    bottom_z: float
    matched: float
    unmatched: float


KITTI_ANCHORS = {
    "Car": AnchorSpec((3.9, 1.6, 1.56), -1.78, 0.6, 0.45),
    "Pedestrian": AnchorSpec((0.8, 0.6, 1.73), -0.6, 0.5, 0.35),
    "Cyclist": AnchorSpec((1.76, 0.6, 1.73), -0.6, 0.5, 0.35),
}
ANCHOR_ROTATIONS = (0.0, math.pi / 2)
NMS_KINDS = ("axis", "rotated")


def make_anchors(class_names, point_cloud_range, feature_size: tuple[int, int]) -> torch.Tensor:
    """Anchors (H, W, num_classes, 2 rotations, 7) in LiDAR boxes (z = centre).

    As OpenPCDet with ``align_center: False``: the W (H) anchor columns (rows) span x_min…x_max
    (y_min…y_max) inclusively, i.e. a step of range / (W - 1).
    """
    height, width = feature_size
    x = torch.linspace(point_cloud_range[0], point_cloud_range[3], width, dtype=torch.float64)
    y = torch.linspace(point_cloud_range[1], point_cloud_range[4], height, dtype=torch.float64)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    per_class = []
    for name in class_names:
        spec = KITTI_ANCHORS[name]
        length, wid, hei = spec.size
        per_rot = [torch.stack([xx, yy, torch.full_like(xx, spec.bottom_z + hei / 2), torch.full_like(xx, length),
                                torch.full_like(xx, wid), torch.full_like(xx, hei), torch.full_like(xx, rot)], dim=-1)
                   for rot in ANCHOR_ROTATIONS]
        per_class.append(torch.stack(per_rot, dim=2))
    return torch.stack(per_class, dim=2).float()


def rotated_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy per-class NMS on rotated BEV IoU; indices of the kept boxes by decreasing score.

    Only same-class pairs whose circumscribed circles meet can overlap; their exact intersection comes
    from ``hrnas.metrics.box_ops.paired_bev_intersection`` (the pairwise form of ``rotated_iou_bev``),
    so memory and time grow with the number of such pairs, not with K².
    """
    from hrnas.metrics.box_ops import paired_bev_intersection

    order = torch.argsort(scores, descending=True)
    bev = boxes[order][:, [0, 1, 3, 4, 6]].detach().double().cpu().numpy()
    cls = labels[order].cpu().numpy()
    count = len(bev)
    radius = 0.5 * np.hypot(bev[:, 2], bev[:, 3])
    # Candidate pairs (i, j), i < j in score order: boxes sorted by x, each i looks only at the
    # boxes within x ± (its radius + the largest radius), then keeps same-class, meeting circles.
    by_x = np.argsort(bev[:, 0], kind="stable")
    xs = bev[by_x, 0]
    reach = radius + (radius.max() if count else 0.0)
    lo = np.searchsorted(xs, bev[:, 0] - reach, side="left")
    hi = np.searchsorted(xs, bev[:, 0] + reach, side="right")
    width = hi - lo
    rows = np.repeat(np.arange(count), width)
    cols = by_x[np.repeat(lo - np.cumsum(width) + width, width) + np.arange(width.sum())]
    dist = np.hypot(bev[rows, 0] - bev[cols, 0], bev[rows, 1] - bev[cols, 1])
    near = (cols > rows) & (cls[rows] == cls[cols]) & (dist < radius[rows] + radius[cols])
    rows, cols = rows[near], cols[near]  # sorted by row
    if rows.size:
        inter = paired_bev_intersection(bev[rows], bev[cols])
        union = bev[rows, 2] * bev[rows, 3] + bev[cols, 2] * bev[cols, 3] - inter
        over = inter > iou_threshold * union
        rows, cols = rows[over], cols[over]  # still sorted by row
    bounds = np.searchsorted(rows, np.arange(count + 1))
    suppressed = np.zeros(count, dtype=bool)
    keep = []
    for i in range(count):
        if not suppressed[i]:
            keep.append(i)
            suppressed[cols[bounds[i]:bounds[i + 1]]] = True
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


class AnchorHeadSingle(nn.Module):
    """Anchor head on one feature map of stride ``feature_stride`` w.r.t. the BEV pillar grid.

    ``forward(x)`` returns ``cls_logits`` (B, A, num_classes), ``box_deltas`` (B, A, 7) and
    ``dir_logits`` (B, A, 2), A = H·W·num_classes·2 in the order of :func:`make_anchors`.
    """

    cls_weight = 1.0
    box_weight = 2.0
    dir_weight = 0.2
    focal_alpha = 0.25
    focal_gamma = 2.0
    smooth_l1_beta = 1.0 / 9.0
    dir_offset = 0.78539
    num_dir_bins = 2

    def __init__(self, in_channels: int, feature_stride: int, class_names, pillar_cfg):
        super().__init__()
        class_names = tuple(class_names)
        unknown = [n for n in class_names if n not in KITTI_ANCHORS]
        if not class_names or unknown or len(set(class_names)) != len(class_names):
            raise UserError(f"class_names: expected distinct names among {', '.join(KITTI_ANCHORS)}, "
                            f"got {list(class_names)}")
        nx, ny = pillar_cfg.grid_size
        if feature_stride < 1 or nx % feature_stride or ny % feature_stride:
            raise UserError(f"feature_stride: {feature_stride} does not divide the {ny}x{nx} BEV grid")
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.feature_size = (ny // feature_stride, nx // feature_stride)
        anchors = make_anchors(class_names, pillar_cfg.point_cloud_range, self.feature_size)
        self.register_buffer("anchors", anchors.reshape(-1, 7), persistent=False)
        anchor_class = torch.arange(1, self.num_classes + 1).view(1, 1, -1, 1).expand(anchors.shape[:4])
        self.register_buffer("anchor_class", anchor_class.reshape(-1).clone(), persistent=False)
        self.anchors_per_location = self.num_classes * len(ANCHOR_ROTATIONS)
        self.coder = ResidualCoder()

        a = self.anchors_per_location
        self.conv_cls = nn.Conv2d(in_channels, a * self.num_classes, 1)
        self.conv_box = nn.Conv2d(in_channels, a * ResidualCoder.code_size, 1)
        self.conv_dir = nn.Conv2d(in_channels, a * self.num_dir_bins, 1)
        prior = 0.01  # focal-loss prior (RetinaNet): every anchor starts as confident background
        nn.init.constant_(self.conv_cls.bias, -math.log((1 - prior) / prior))
        nn.init.normal_(self.conv_box.weight, mean=0.0, std=0.001)
        nn.init.zeros_(self.conv_box.bias)

    def forward(self, x: torch.Tensor) -> dict:
        if tuple(x.shape[-2:]) != self.feature_size:
            raise UserError(f"feature_stride: head expects a {self.feature_size[0]}x{self.feature_size[1]} feature "
                            f"map, got {tuple(x.shape[-2:])}")
        b = x.shape[0]

        def flat(t, channels):  # (B, A_loc*ch, H, W) → (B, H*W*A_loc, ch), the anchor order
            return t.permute(0, 2, 3, 1).reshape(b, -1, channels)

        return {"cls_logits": flat(self.conv_cls(x), self.num_classes),
                "box_deltas": flat(self.conv_box(x), ResidualCoder.code_size),
                "dir_logits": flat(self.conv_dir(x), self.num_dir_bins)}

    # ---------------------------------------------------------------- training
    @torch.no_grad()
    def assign_targets(self, gt_boxes: torch.Tensor, gt_labels: torch.Tensor):
        """Per-class axis-aligned BEV IoU matching.

        Returns ``labels`` (B, A): class id 1..K for positives, 0 background, -1 ignored (IoU between
        the two thresholds); and ``box_targets`` (B, A, 7) residuals (zero except at positives).
        An anchor is positive at IoU >= matched, negative below unmatched; each GT's best anchor(s)
        are positive whatever their IoU (unless the IoU is 0).
        """
        if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 7:
            raise UserError(f"gt_boxes: expected (B, M, 7), got {tuple(gt_boxes.shape)}")
        if gt_labels.shape != gt_boxes.shape[:2]:
            raise UserError(f"gt_labels: expected shape {tuple(gt_boxes.shape[:2])}, got {tuple(gt_labels.shape)}")
        if gt_labels.numel() and (gt_labels.min() < 0 or gt_labels.max() > self.num_classes):
            raise UserError(f"gt_labels: values must be 0 (padding) or 1..{self.num_classes}, got "
                            f"{gt_labels.min().item()}..{gt_labels.max().item()}")
        batch, num_anchors = gt_boxes.shape[0], self.anchors.shape[0]
        labels = torch.full((batch, num_anchors), -1, dtype=torch.long, device=gt_boxes.device)
        targets = gt_boxes.new_zeros(batch, num_anchors, ResidualCoder.code_size)
        for k, name in enumerate(self.class_names, start=1):
            spec = KITTI_ANCHORS[name]
            idx = (self.anchor_class == k).nonzero().squeeze(1)
            anchors = self.anchors[idx]
            rects = nearest_bev_rect(anchors)
            for b in range(batch):
                gts = gt_boxes[b][gt_labels[b] == k]
                if gts.shape[0] == 0:
                    labels[b, idx] = 0
                    continue
                iou = box_iou(rects, nearest_bev_rect(gts))  # (A_k, G)
                best_iou, best_gt = iou.max(dim=1)
                lab = torch.full_like(best_gt, -1)
                lab[best_iou < spec.unmatched] = 0
                lab[best_iou >= spec.matched] = k
                gt_best = iou.max(dim=0).values
                forced = ((iou == gt_best[None]) & (gt_best[None] > 0)).any(dim=1)
                lab[forced] = k
                labels[b, idx] = lab
                pos = lab == k
                targets[b, idx[pos]] = self.coder.encode(gts[best_gt[pos]], anchors[pos])
        return labels, targets

    def loss(self, preds: dict, gt_boxes: torch.Tensor, gt_labels: torch.Tensor):
        """Total loss and its weighted parts: focal (×1), smooth-L1 (×2) and direction CE (×0.2)."""
        labels, box_targets = self.assign_targets(gt_boxes, gt_labels)
        batch = labels.shape[0]
        positive = labels > 0
        normaliser = positive.sum(dim=1, keepdim=True).clamp(min=1).float()
        cls_w = (labels >= 0).float() / normaliser
        reg_w = positive.float() / normaliser

        cls_logits = preds["cls_logits"]
        onehot = torch.zeros_like(cls_logits)
        onehot[positive] = F.one_hot(labels[positive] - 1, self.num_classes).to(onehot.dtype)
        focal = sigmoid_focal_loss(cls_logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                   reduction="none").sum(-1)
        loss_cls = (focal * cls_w).sum() / batch

        # sin(a - b) = sin a cos b - cos a sin b: the angle enters the smooth-L1 as two products.
        deltas = preds["box_deltas"]
        pred_rot, tgt_rot = deltas[..., 6], box_targets[..., 6]
        deltas = torch.cat([deltas[..., :6], (torch.sin(pred_rot) * torch.cos(tgt_rot))[..., None]], dim=-1)
        targets = torch.cat([box_targets[..., :6], (torch.cos(pred_rot) * torch.sin(tgt_rot))[..., None]], dim=-1)
        smooth = F.smooth_l1_loss(deltas, targets, beta=self.smooth_l1_beta, reduction="none").sum(-1)
        loss_box = (smooth * reg_w).sum() / batch

        yaw = box_targets[..., 6] + self.anchors[None, :, 6]
        period = 2 * math.pi / self.num_dir_bins
        dir_target = torch.floor(limit_period(yaw - self.dir_offset, 0.0, 2 * math.pi) / period).long()
        dir_target = dir_target.clamp(0, self.num_dir_bins - 1)
        ce = F.cross_entropy(preds["dir_logits"].reshape(-1, self.num_dir_bins), dir_target.reshape(-1),
                             reduction="none").view_as(reg_w)
        loss_dir = (ce * reg_w).sum() / batch

        parts = {"loss_cls": self.cls_weight * loss_cls, "loss_box": self.box_weight * loss_box,
                 "loss_dir": self.dir_weight * loss_dir}
        total = parts["loss_cls"] + parts["loss_box"] + parts["loss_dir"]
        stats = {name: value.detach() for name, value in parts.items()}
        stats["num_positive"] = positive.sum().detach()
        return total, stats

    # ---------------------------------------------------------------- inference
    def decode(self, preds: dict) -> torch.Tensor:
        """Boxes (B, A, 7) with the heading restored by the direction bin, yaw wrapped to [-π, π)."""
        boxes = self.coder.decode(preds["box_deltas"], self.anchors[None].to(preds["box_deltas"].dtype))
        period = 2 * math.pi / self.num_dir_bins
        bins = preds["dir_logits"].argmax(dim=-1).to(boxes.dtype)
        yaw = limit_period(boxes[..., 6] - self.dir_offset, 0.0, period) + self.dir_offset + period * bins
        return torch.cat([boxes[..., :6], limit_period(yaw, 0.5, 2 * math.pi)[..., None]], dim=-1)

    @staticmethod
    def check_predict_args(**kwargs) -> None:
        """Validate keyword arguments of :meth:`predict` (used for a detector's ``test_cfg``)."""
        known = ("score_thr", "nms", "nms_iou", "pre_max", "post_max")
        for key, value in kwargs.items():
            if key not in known:
                raise UserError(f"test_cfg: unknown key '{key}'; accepted: {', '.join(known)}")
            if key == "nms" and value not in NMS_KINDS:
                raise UserError(f"nms: unknown value '{value}'; accepted: {', '.join(NMS_KINDS)}")
            if key in ("score_thr", "nms_iou") and not 0.0 <= float(value) <= 1.0:
                raise UserError(f"{key}: expected a value in [0, 1], got {value}")
            if key in ("pre_max", "post_max") and (not isinstance(value, int) or value < 1):
                raise UserError(f"{key}: expected a positive integer, got {value!r}")

    @torch.no_grad()
    def predict(self, preds: dict, score_thr: float = 0.1, nms: str = "axis", nms_iou: float = 0.5,
                pre_max: int = 4096, post_max: int = 100) -> list[dict]:
        """Per sample: ``boxes`` (K, 7) LiDAR (x, y, z_centre, l, w, h, yaw), ``scores`` (K,), ``labels`` (K,)
        1-based class ids. Each anchor keeps its best class; anchors above ``score_thr``, the ``pre_max``
        best, go through per-class NMS — axis-aligned BEV IoU (``"axis"``, the PointPillars paper and
        HR-NAS supplement, IoU 0.5) or rotated BEV IoU (``"rotated"``, OpenPCDet) — and the
        ``post_max`` best survivors are returned."""
        self.check_predict_args(score_thr=score_thr, nms=nms, nms_iou=nms_iou, pre_max=pre_max, post_max=post_max)
        boxes = self.decode(preds)
        scores, labels = torch.sigmoid(preds["cls_logits"]).max(dim=-1)
        results = []
        for b in range(boxes.shape[0]):
            keep = (scores[b] > score_thr).nonzero().squeeze(1)
            top = scores[b, keep].topk(min(pre_max, keep.numel())).indices
            keep = keep[top]
            box, score, label = boxes[b, keep], scores[b, keep], labels[b, keep] + 1
            if nms == "axis":
                kept = batched_nms(nearest_bev_rect(box), score, label, nms_iou)
            else:
                kept = rotated_nms(box, score, label, nms_iou)
            kept = kept[:post_max]
            results.append({"boxes": box[kept], "scores": score[kept], "labels": label[kept]})
        return results
