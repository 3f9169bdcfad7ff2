"""Squeeze-and-Excitation (Hu et al. 2018), as HR-NAS†‡ retrains with it (supplement §1) and as Table 2
compares it.

The gate re-weights channels of a searching block: its hidden features before the projection (the
authors' fused retraining block) or its conv output (``model.se_on``, see
:class:`hrnas.models.searching_block.SEConfig`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from hrnas.models.layers import make_activation


class SqueezeExcite(nn.Module):
    """Channel gate: global average pool → 1×1 reduce (bias) → act → 1×1 expand (bias) → sigmoid,
    multiplied in. ``act`` is the network's activation (the authors' SE uses the block's).

    The input is one tensor or a list of tensors whose channels are gated as one concatenated tensor
    (the searching block's kernel paths, never concatenated); the output has the input's form.
    """

    def __init__(self, channels: int, reduced: int, act: str = "relu"):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = make_activation(act)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]):
        parts = [x] if isinstance(x, torch.Tensor) else list(x)
        squeezed = torch.cat([p.mean((2, 3), keepdim=True) for p in parts], dim=1)
        gate = torch.sigmoid(self.expand(self.act(self.reduce(squeezed))))
        out = [p * g for p, g in zip(parts, gate.split([p.shape[1] for p in parts], dim=1))]
        return out[0] if isinstance(x, torch.Tensor) else out
