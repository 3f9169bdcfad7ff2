"""Top-k accuracy for ImageNet-style classification (docs/authors-code.md §5: top-1/top-5 on
the single centre crop). Counts are accumulated so that ranks can all-reduce one small tensor."""
from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """Number of samples whose target is among the k highest logits, for each k (int64, (len(ks),)).

    k larger than the number of classes is clamped to it (every sample is then correct).
    """
    if logits.ndim != 2 or target.ndim != 1 or logits.shape[0] != target.shape[0]:
        raise ValueError(f"topk_correct: logits must be (N, C) and target (N,), got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices  # (N, maxk), best first
    hit = top.eq(target[:, None])
    cum = hit.cumsum(dim=1).clamp_(max=1)  # hit within the first j+1 guesses
    return torch.stack([cum[:, min(k, maxk) - 1].sum() for k in ks]).to(torch.int64)


class ClassificationMeter:
    """Accumulates top-k hits; ``compute()`` gives percentages ``{"top1": .., "top5": ..}``.

    ``state()`` is a float64 tensor ``[n, hits_k1, hits_k2, ...]`` to all-reduce (sum) across ranks;
    ``load_state`` puts the reduced tensor back.
    """

    def __init__(self, ks=(1, 5)):
        self.ks = tuple(int(k) for k in ks)
        self.reset()

    def reset(self) -> None:
        self._state = torch.zeros(1 + len(self.ks), dtype=torch.float64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        hits = topk_correct(logits.detach(), target.detach(), self.ks).to("cpu", torch.float64)
        self._state[0] += target.shape[0]
        self._state[1:] += hits

    def state(self) -> torch.Tensor:
        return self._state.clone()

    def load_state(self, state: torch.Tensor) -> None:
        if state.shape != self._state.shape:
            raise ValueError(f"state must have shape {tuple(self._state.shape)}, got "
                             f"{tuple(state.shape)}")
        self._state = state.detach().to("cpu", torch.float64).clone()

    def merge(self, other: "ClassificationMeter") -> None:
        if other.ks != self.ks:
            raise ValueError(f"cannot merge meters with ks {other.ks} into ks {self.ks}")
        self._state += other._state

    @property
    def count(self) -> int:
        return int(self._state[0])

    def compute(self) -> dict:
        n = self._state[0].item()
        return {f"top{k}": (100.0 * self._state[i + 1].item() / n if n else float("nan"))
                for i, k in enumerate(self.ks)}
