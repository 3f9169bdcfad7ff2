"""Top-k accuracy on a hand-made batch (hrnas.metrics.classification)."""
import pytest
import torch

from hrnas.metrics.classification import ClassificationMeter, topk_correct

# Rankings (best first): row0: 1,... ; row1: 0,4,3,2,1,5 ; row2: 5,4,3,... ; row3: 0,1,2,3,4,5
LOGITS = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],
                       [0.5, 0.1, 0.2, 0.3, 0.4, 0.0],
                       [0.0, 0.0, 0.0, 1.0, 2.0, 3.0],
                       [3.0, 2.0, 1.0, 0.0, -1.0, -2.0]])
TARGET = torch.tensor([1, 1, 5, 5])  # target rank: 1, 5, 1, 6


def test_topk_correct_hand_counts():
    assert topk_correct(LOGITS, TARGET, ks=(1, 5)).tolist() == [2, 3]
    assert topk_correct(LOGITS, TARGET, ks=(1, 2, 6)).tolist() == [2, 2, 4]
    assert topk_correct(LOGITS, TARGET, ks=(10,)).tolist() == [4]  # k clamped to 6 classes


def test_meter_accumulates_merges_and_all_reduces():
    m = ClassificationMeter()
    m.update(LOGITS[:2], TARGET[:2])
    m.update(LOGITS[2:], TARGET[2:])
    assert m.compute() == pytest.approx({"top1": 50.0, "top5": 75.0})
    a, b = ClassificationMeter(), ClassificationMeter()
    a.update(LOGITS[:3], TARGET[:3])   # top1 2/3, top5 3/3
    b.update(LOGITS[3:], TARGET[3:])   # top1 0/1, top5 0/1
    assert a.compute() == pytest.approx({"top1": 200 / 3, "top5": 100.0})
    a.merge(b)
    assert a.compute() == pytest.approx({"top1": 50.0, "top5": 75.0})
    # what an all-reduce (sum) of two ranks' states gives
    c, d = ClassificationMeter(), ClassificationMeter()
    c.update(LOGITS[:1], TARGET[:1])
    d.update(LOGITS[1:], TARGET[1:])
    c.load_state(c.state() + d.state())
    assert c.count == 4 and c.compute() == pytest.approx({"top1": 50.0, "top5": 75.0})
    with pytest.raises(ValueError):
        c.load_state(torch.zeros(5))
