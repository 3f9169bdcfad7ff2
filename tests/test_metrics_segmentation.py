"""mIoU / mAcc / aAcc on a small confusion case with ignored pixels (mmseg definition)."""
import math

import pytest
import torch

from hrnas.errors import UserError
from hrnas.metrics.segmentation import SegmentationMeter

TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 1, 0]])
# kept (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,1); the 255 pixel is dropped.
# I = [1, 2, 0], GT = [2, 2, 1], Pred = [1, 4, 0], U = GT + Pred - I = [2, 4, 1]
# IoU = [1/2, 1/2, 0] -> mIoU 1/3; Acc = [1/2, 1, 0] -> mAcc 1/2; aAcc = 3/5


def test_hand_computed_confusion():
    m = SegmentationMeter(3)
    m.update(PRED, TARGET)
    assert m.hist.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    r = m.compute()
    assert r["IoU"] == pytest.approx([0.5, 0.5, 0.0])
    assert r["mIoU"] == pytest.approx(1 / 3)
    assert r["mAcc"] == pytest.approx(0.5)
    assert r["aAcc"] == pytest.approx(0.6)


def test_absent_class_is_nan_and_skipped():
    m = SegmentationMeter(4)  # class 3 never appears: IoU and Acc NaN, left out of the means
    m.update(PRED[None], TARGET[None])  # B x H x W
    r = m.compute()
    assert math.isnan(r["IoU"][3]) and math.isnan(r["Acc"][3])
    assert r["mIoU"] == pytest.approx(1 / 3) and r["mAcc"] == pytest.approx(0.5)


def test_dataset_level_not_per_image_average():
    # image A: all 4 pixels class 0, all right -> IoU_0 = 1
    # image B: 1 pixel of class 0 predicted 1 -> IoU_0 = 0, IoU_1 = 0
    m = SegmentationMeter(2)
    m.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    m.update(torch.ones(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))
    # hist = [[4, 1], [0, 0]]: IoU_0 = 4/5, IoU_1 = 0/1 -> mIoU 0.4 (per-image mean would be 0.5)
    r = m.compute()
    assert r["IoU"] == pytest.approx([0.8, 0.0]) and r["mIoU"] == pytest.approx(0.4)
    assert r["aAcc"] == pytest.approx(0.8)
    other = SegmentationMeter(2)
    other.update(torch.ones(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long))
    m.merge(other)
    assert m.hist.tolist() == [[4, 1], [0, 1]]


def test_bad_labels():
    m = SegmentationMeter(3)
    with pytest.raises(UserError, match="label 7"):
        m.update(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
