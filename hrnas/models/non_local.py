"""The Non-local block of Table 2 (Wang et al. 2018, embedded Gaussian, with 2×2 max-pooled keys/values as
in the original paper): an extra additive path on a searching block's input, like the transformer.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class NonLocal(nn.Module):
    """Embedded-Gaussian non-local block returning W·softmax(θφᵀ)g (added to the block output); θ, φ, g
    map the C channels to max(1, round(``ratio`` · C)) (Wang et al.: C/2)."""

    def __init__(self, channels: int, ratio: float = 0.5):
        super().__init__()
        inner = max(1, round(channels * ratio))
        self.theta = nn.Conv2d(channels, inner, 1, bias=False)
        self.phi = nn.Conv2d(channels, inner, 1, bias=False)
        self.g = nn.Conv2d(channels, inner, 1, bias=False)
        self.out = nn.Conv2d(inner, channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.zero_init_output()

    def zero_init_output(self) -> None:
        """γ = 0 in the output BN: the block starts as the identity (Wang et al. 2018, §4.1). The network
        initialisation (:func:`hrnas.models.factory.init_weights`) calls this again after setting every
        other BN's γ to 1."""
        nn.init.zeros_(self.norm.weight)

    def attention_macs(self, h: int, w: int) -> int:
        """MACs of θφᵀ and its product with g for an h×w input (keys/values pooled 2×2)."""
        keys = (-(-h // 2)) * (-(-w // 2)) if min(h, w) > 1 else h * w
        return 2 * h * w * keys * self.theta.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)
        pooled = F.max_pool2d(x, 2, ceil_mode=True) if min(h, w) > 1 else x
        k = self.phi(pooled).flatten(2).transpose(1, 2)
        v = self.g(pooled).flatten(2).transpose(1, 2)
        y = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0).squeeze(1)
        return self.norm(self.out(y.transpose(1, 2).reshape(b, -1, h, w)))
