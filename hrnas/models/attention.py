"""Attention modules compared with the lightweight transformer in supplement Table 2: SE and Non-local.

Both sit where the transformer sits (the residual searching blocks). Squeeze-and-Excitation re-weights
the channels of the block's conv features; the Non-local block (embedded Gaussian, with 2×2 max-pooled
keys/values as in the original paper) is an extra additive path on the block input, like the transformer.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SqueezeExcite(nn.Module):
    """Channel gate: global pool → 1×1 reduce → ReLU → 1×1 expand → sigmoid, multiplied in."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s), inplace=True)))


class NonLocal(nn.Module):
    """Embedded-Gaussian non-local block returning W·softmax(θφᵀ)g (added to the block output)."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 2)
        self.theta = nn.Conv2d(channels, inner, 1, bias=False)
        self.phi = nn.Conv2d(channels, inner, 1, bias=False)
        self.g = nn.Conv2d(channels, inner, 1, bias=False)
        self.out = nn.Conv2d(inner, channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.norm.weight)  # starts as an identity block, as in Wang et al. 2018

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
