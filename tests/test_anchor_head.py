"""Anchor head: anchors, residual coding, target assignment, losses, decoding and NMS."""
import math

import pytest
import torch

from hrnas.errors import UserError
from hrnas.models.anchor_head import AnchorHeadSingle, make_anchors, rotated_nms
from hrnas.models.box_coder import ResidualCoder, limit_period, nearest_bev_rect
from hrnas.models.pointpillars import PillarConfig

CLASSES = ["Car", "Pedestrian", "Cyclist"]
# 20.48 m x 20.48 m at 0.32 m pillars: 64 x 64 BEV grid, 32 x 32 feature map at stride 2
CFG = PillarConfig((0.0, -10.24, -3.0, 20.48, 10.24, 1.0), (0.32, 0.32, 4.0), 2000, 16)


def head(classes=CLASSES):
    return AnchorHeadSingle(8, 2, classes, CFG)


def anchor_index(h, iy, ix, cls, rot):
    """Flat anchor index for feature cell (iy, ix), 0-based class and rotation (layout H, W, K, 2)."""
    k = h.num_classes
    return ((iy * h.feature_size[1] + ix) * k + cls) * 2 + rot


def perfect_preds(h, labels, targets, logit=12.0):
    """Predictions that reproduce the assigned targets exactly (confident classes and direction bins)."""
    b, a = labels.shape
    cls = torch.full((b, a, h.num_classes), -logit)
    pos = labels > 0
    cls[pos, labels[pos] - 1] = logit
    yaw = targets[..., 6] + h.anchors[None, :, 6]
    bin_ = (limit_period(yaw - h.dir_offset, 0.0, 2 * math.pi) >= math.pi).long()
    dirs = torch.full((b, a, 2), -logit)
    dirs.scatter_(2, bin_[..., None], logit)
    return {"cls_logits": cls, "box_deltas": targets.clone(), "dir_logits": dirs}


# ----------------------------------------------------------------------------- anchors & coder
def test_kitti_anchor_grid():
    anchors = make_anchors(CLASSES, PillarConfig.paper().point_cloud_range, (248, 216))
    assert anchors.shape == (248, 216, 3, 2, 7)
    assert anchors.reshape(-1, 7).shape[0] == 321408  # OpenPCDet's count at stride 2
    car = anchors[:, :, 0]
    assert torch.allclose(car[0, 0, 0], torch.tensor([0.0, -39.68, -1.78 + 0.78, 3.9, 1.6, 1.56, 0.0]))
    assert torch.allclose(car[-1, -1, 1, :2], torch.tensor([69.12, 39.68]))  # range ends included
    assert math.isclose(float(car[0, 1, 0, 0]), 69.12 / 215, rel_tol=1e-6)
    assert torch.allclose(anchors[5, 7, :, 1, 6], torch.full((3,), math.pi / 2))
    ped, cyc = anchors[0, 0, 1, 0], anchors[0, 0, 2, 0]
    assert torch.allclose(ped[2:6], torch.tensor([-0.6 + 0.865, 0.8, 0.6, 1.73]))
    assert torch.allclose(cyc[2:6], torch.tensor([-0.6 + 0.865, 1.76, 0.6, 1.73]))


def test_residual_coder_round_trip():
    g = torch.Generator().manual_seed(0)
    n = 500
    anchors = torch.cat([torch.rand(n, 3, generator=g, dtype=torch.float64) * 40,
                         0.5 + torch.rand(n, 3, generator=g, dtype=torch.float64) * 4,
                         torch.rand(n, 1, generator=g, dtype=torch.float64) * 2], dim=1)
    boxes = anchors + torch.randn(n, 7, generator=g, dtype=torch.float64) * torch.tensor([1, 1, .3, .2, .2, .2, 2.])
    boxes[:, 3:6] = boxes[:, 3:6].abs() + 0.1
    deltas = ResidualCoder.encode(boxes, anchors)
    torch.testing.assert_close(ResidualCoder.decode(deltas, anchors), boxes, atol=1e-5, rtol=0)
    torch.testing.assert_close(ResidualCoder.encode(anchors, anchors), torch.zeros(n, 7, dtype=torch.float64))
    # the x offset is measured in anchor diagonals, z in anchor heights
    one = torch.tensor([[3.0, 0.0, 0.0, 3.0, 4.0, 2.0, 0.0]])
    moved = one + torch.tensor([[5.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(ResidualCoder.encode(moved, one)[0, :3], torch.tensor([1.0, 0.0, 0.5]))


def test_nearest_bev_rect_swaps_dimensions_across_the_axes():
    boxes = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.0, yaw] for yaw in (0.2, math.pi / 2, -3.0, 1.0, -1.9)])
    rect = nearest_bev_rect(boxes)
    size = rect[:, 2:] - rect[:, :2]
    torch.testing.assert_close(size, torch.tensor([[4.0, 2.0], [2.0, 4.0], [4.0, 2.0], [2.0, 4.0], [2.0, 4.0]]))


# ----------------------------------------------------------------------------- assignment
def test_gt_on_an_anchor_is_positive_and_far_anchors_negative():
    h = head()
    car_a = h.anchors[anchor_index(h, 10, 12, 0, 0)]
    ped_a = h.anchors[anchor_index(h, 25, 5, 1, 1)]
    gt = torch.stack([car_a, ped_a, torch.zeros(7)])[None]
    labels, targets = h.assign_targets(gt, torch.tensor([[1, 2, 0]]))
    car_i, ped_i = anchor_index(h, 10, 12, 0, 0), anchor_index(h, 25, 5, 1, 1)
    assert labels[0, car_i] == 1 and labels[0, ped_i] == 2
    torch.testing.assert_close(targets[0, car_i], torch.zeros(7))
    # the perpendicular car anchor at the same place: IoU(3.9x1.6, 1.6x3.9) = 0.26 < 0.45 -> background
    assert labels[0, anchor_index(h, 10, 12, 0, 1)] == 0
    # a cyclist anchor on the pedestrian: no cyclist GT, so background; car anchors far away: background
    assert labels[0, anchor_index(h, 25, 5, 2, 1)] == 0
    centres = h.anchors[:, :2]
    far = ((centres - car_a[:2]).norm(dim=1) > 6) & ((centres - ped_a[:2]).norm(dim=1) > 6)
    assert torch.all(labels[0, far] == 0)
    # anchors near the car with intermediate IoU are ignored (-1), the neighbours along x are positive
    nxt = anchor_index(h, 10, 13, 0, 0)  # 0.66 m further: IoU = (3.9-0.66)/(3.9+0.66) = 0.71 >= 0.6
    assert labels[0, nxt] == 1
    assert (labels[0] == -1).any()
    # pedestrians are small: besides the exact anchor only the perpendicular one at the same place
    # matches (IoU of 0.8x0.6 with 0.6x0.8 = 0.36 / 0.6 = 0.6 >= 0.5); the next cell is 0.66 m away
    assert sorted((labels[0] == 2).nonzero().squeeze(1).tolist()) == [anchor_index(h, 25, 5, 1, r) for r in (0, 1)]


def test_each_gt_gets_its_best_anchor_even_below_threshold():
    h = head(["Car"])
    a = h.anchors[anchor_index(h, 16, 16, 0, 0)]
    # a narrow car off the anchor: BEV IoU 0.41 with it (below the 0.45 background threshold),
    # 0.40 and less with the neighbours 0.66 m away
    gt = a.clone()
    gt[:2] += 0.2
    gt[4] = 0.7
    labels, targets = h.assign_targets(gt[None, None], torch.tensor([[1]]))
    pos = (labels[0] == 1).nonzero().squeeze(1)
    assert pos.tolist() == [anchor_index(h, 16, 16, 0, 0)]
    decoded = ResidualCoder.decode(targets[0, pos], h.anchors[pos])
    torch.testing.assert_close(decoded[0], gt, atol=1e-5, rtol=0)


def test_assignment_rejects_bad_labels():
    h = head(["Car"])
    with pytest.raises(UserError, match="gt_labels"):
        h.assign_targets(torch.zeros(1, 2, 7), torch.tensor([[1, 2]]))
    with pytest.raises(UserError, match="gt_boxes"):
        h.assign_targets(torch.zeros(1, 2, 6), torch.tensor([[1, 1]]))


# ----------------------------------------------------------------------------- losses & decoding
def scene():
    return (torch.tensor([[[5.0, 3.0, -0.95, 3.9, 1.6, 1.56, 2.6],
                           [12.0, -4.0, -0.95, 4.1, 1.7, 1.5, -1.4],
                           [3.0, -6.0, -0.86, 0.8, 0.6, 1.73, -2.9],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]]),
            torch.tensor([[1, 1, 2, 0]]))


def test_loss_is_small_for_perfect_predictions_and_decoding_restores_the_heading():
    h = head()
    gt_boxes, gt_labels = scene()
    labels, targets = h.assign_targets(gt_boxes, gt_labels)
    preds = perfect_preds(h, labels, targets)
    total, parts = h.loss(preds, gt_boxes, gt_labels)
    assert float(total) < 1e-3 and int(parts["num_positive"]) >= 3
    # flipping the direction bins costs exactly what the CE says: 0.2 x ~12 per positive, normalised
    wrong = dict(preds, dir_logits=preds["dir_logits"].flip(-1))
    _, parts_wrong = h.loss(wrong, gt_boxes, gt_labels)
    assert math.isclose(float(parts_wrong["loss_dir"]), 0.2 * 24, rel_tol=1e-3)
    # the sin-difference trick makes a yaw off by pi free for the box loss
    flipped = dict(preds, box_deltas=preds["box_deltas"] + torch.tensor([0, 0, 0, 0, 0, 0, math.pi]))
    _, parts_flip = h.loss(flipped, gt_boxes, gt_labels)
    assert float(parts_flip["loss_box"]) < 1e-6
    # decoded boxes at the positives are the GT boxes, heading included (yaw 2.6, -1.4, -2.9)
    boxes = h.decode(preds)[0]
    pos = labels[0] > 0
    gt_of = targets.new_zeros(int(pos.sum()), dtype=torch.long)
    for i, box in enumerate(boxes[pos]):
        gt_of[i] = (gt_boxes[0, :3, :2] - box[:2]).norm(dim=1).argmin()
    expected = gt_boxes[0, gt_of]
    torch.testing.assert_close(boxes[pos], expected, atol=1e-4, rtol=0)


def test_loss_without_objects_is_background_focal_only():
    h = head()
    zeros = torch.zeros(2, h.anchors.shape[0], 3)
    preds = {"cls_logits": zeros, "box_deltas": torch.randn(2, h.anchors.shape[0], 7),
             "dir_logits": torch.randn(2, h.anchors.shape[0], 2)}
    total, parts = h.loss(preds, torch.zeros(2, 3, 7), torch.zeros(2, 3, dtype=torch.long))
    assert float(parts["loss_box"]) == 0 and float(parts["loss_dir"]) == 0
    # every anchor negative, p = 0.5: focal = 0.75 * 0.25 * log 2 per class and anchor, normaliser 1
    expected = 0.75 * 0.25 * math.log(2) * h.anchors.shape[0] * 3
    assert math.isclose(float(total), expected, rel_tol=1e-4)


def test_forward_layout_matches_anchor_order():
    h = head()
    x = torch.randn(2, 8, 32, 32)
    out = h(x)
    a = h.anchors.shape[0]
    assert out["cls_logits"].shape == (2, a, 3) and out["box_deltas"].shape == (2, a, 7)
    assert out["dir_logits"].shape == (2, a, 2)
    # anchor (iy, ix, class c, rot r) reads channel (c*2 + r) * 3 + k of the class conv at pixel (iy, ix)
    cls_map = h.conv_cls(x)
    i = anchor_index(h, 7, 19, 2, 1)
    torch.testing.assert_close(out["cls_logits"][1, i], cls_map[1, (2 * 2 + 1) * 3:(2 * 2 + 2) * 3, 7, 19])
    with pytest.raises(UserError, match="feature_stride"):
        h(torch.randn(1, 8, 16, 16))


# ----------------------------------------------------------------------------- predict & NMS
def preds_with_boxes(h, entries):
    """Predictions where anchor index i decodes to box with score s: entries = [(i, box, class, score)]."""
    a = h.anchors.shape[0]
    cls = torch.full((1, a, h.num_classes), -20.0)
    deltas = torch.zeros(1, a, 7)
    dirs = torch.zeros(1, a, 2)
    for i, box, k, score in entries:
        cls[0, i, k - 1] = math.log(score / (1 - score))
        deltas[0, i] = ResidualCoder.encode(box, h.anchors[i])
        bin_ = int(limit_period(box[6] - h.dir_offset, 0.0, 2 * math.pi) >= math.pi)
        dirs[0, i, bin_] = 5.0
    return {"cls_logits": cls, "box_deltas": deltas, "dir_logits": dirs}


def test_axis_aligned_nms_removes_a_duplicate():
    h = head()
    car = torch.tensor([6.0, 2.0, -1.0, 3.9, 1.6, 1.56, 0.1])
    dup = car + torch.tensor([0.3, 0.1, 0.0, 0.0, 0.0, 0.0, 0.05])
    other = torch.tensor([15.0, -5.0, -1.0, 4.0, 1.7, 1.5, 1.6])
    ped_on_car = torch.tensor([6.2, 2.1, -0.9, 0.8, 0.6, 1.73, 0.0])
    preds = preds_with_boxes(h, [(anchor_index(h, 10, 9, 0, 0), car, 1, 0.9),
                                 (anchor_index(h, 10, 10, 0, 0), dup, 1, 0.8),
                                 (anchor_index(h, 3, 23, 0, 1), other, 1, 0.7),
                                 (anchor_index(h, 10, 9, 1, 0), ped_on_car, 2, 0.6),
                                 (anchor_index(h, 20, 20, 0, 0), other + 3, 1, 0.05)])  # below score_thr
    out = h.predict(preds)[0]
    assert out["labels"].tolist() == [1, 1, 2]  # duplicate removed, other class kept (per-class NMS)
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.7, 0.6]))
    torch.testing.assert_close(out["boxes"], torch.stack([car, other, ped_on_car]), atol=1e-4, rtol=0)
    kept_all = h.predict(preds, nms_iou=0.95)[0]  # the duplicate's BEV IoU is ~0.8
    assert len(kept_all["scores"]) == 4
    assert len(h.predict(preds, post_max=1)[0]["scores"]) == 1
    assert len(h.predict(preds, pre_max=2)[0]["scores"]) == 1  # the 2 best are the car and its duplicate


def test_rotated_nms_sees_what_axis_aligned_nms_misses():
    h = head(["Car"])
    # two diagonal cars crossing like an X: nearest-BEV rectangles coincide, true rotated IoU is small
    a = torch.tensor([10.0, 0.0, -1.0, 3.9, 1.6, 1.56, math.pi / 4 - 0.01])
    b = torch.tensor([10.0, 0.0, -1.0, 3.9, 1.6, 1.56, -math.pi / 4 + 0.01])
    c = a + torch.tensor([0.1, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0])  # a true duplicate of a
    preds = preds_with_boxes(h, [(anchor_index(h, 16, 15, 0, 0), a, 1, 0.9),
                                 (anchor_index(h, 16, 16, 0, 1), b, 1, 0.8),
                                 (anchor_index(h, 16, 17, 0, 0), c, 1, 0.7)])
    axis = h.predict(preds, nms="axis", nms_iou=0.5)[0]
    rotated = h.predict(preds, nms="rotated", nms_iou=0.5)[0]
    # both diagonal boxes map to the same 3.9 x 1.6 axis-aligned rectangle: b is wrongly suppressed
    torch.testing.assert_close(axis["scores"], torch.tensor([0.9]))
    torch.testing.assert_close(rotated["scores"], torch.tensor([0.9, 0.8]))
    keep = rotated_nms(torch.stack([a, b, c]), torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 1, 1]), 0.01)
    assert keep.tolist() == [0]  # OpenPCDet's 0.01 threshold suppresses any overlap
    keep = rotated_nms(torch.stack([a, b, c]), torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 2, 1]), 0.01)
    assert keep.tolist() == [0, 1]  # per class


def test_bad_head_arguments():
    with pytest.raises(UserError, match="class_names"):
        AnchorHeadSingle(8, 2, ["Car", "Truck"], CFG)
    with pytest.raises(UserError, match="feature_stride"):
        AnchorHeadSingle(8, 3, ["Car"], CFG)
    h = head(["Car"])
    preds = h(torch.randn(1, 8, 32, 32))
    with pytest.raises(UserError, match="nms"):
        h.predict(preds, nms="soft")
    with pytest.raises(UserError, match="post_max"):
        h.predict(preds, post_max=0)


def test_rotated_nms_matches_plain_greedy_nms():
    from hrnas.metrics.box_ops import rotated_iou_bev

    g = torch.Generator().manual_seed(0)
    n = 300
    boxes = torch.cat([torch.rand(n, 2, generator=g) * torch.tensor([20.0, 10.0]), torch.zeros(n, 1),
                       0.5 + 4 * torch.rand(n, 2, generator=g), torch.ones(n, 1),
                       (torch.rand(n, 1, generator=g) - 0.5) * 2 * math.pi], dim=1).double()
    scores = torch.rand(n, generator=g).double()
    labels = torch.randint(1, 3, (n,), generator=g)
    iou = torch.as_tensor(rotated_iou_bev(boxes[:, [0, 1, 3, 4, 6]], boxes[:, [0, 1, 3, 4, 6]]))
    for threshold in (0.01, 0.3):
        expected, alive = [], torch.ones(n, dtype=torch.bool)
        for i in torch.argsort(scores, descending=True).tolist():
            if alive[i]:
                expected.append(i)
                alive &= ~((iou[i] > threshold) & (labels == labels[i]))
        got = rotated_nms(boxes, scores, labels, threshold).tolist()
        assert got == expected and 20 < len(got) < n
