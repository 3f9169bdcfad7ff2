"""The searching block of HR-NAS (paper §3.1, Fig. 2; reference official-code.md §1.3).

An inverted residual with one path per depthwise kernel size k ∈ {3, 5, 7}. Path k has h_k hidden
channels: 1×1 expand → BN → act → k×k depthwise (block stride) → BN → act. The BN after the depthwise
conv holds the scale factors γ that the search penalises and shrinks. The paths' outputs are projected by
1×1 convs, summed and normalised by one BN (linear bottleneck); the shortcut is the identity or a grouped
1×1 conv. Any h_k may be 0 (the path is removed); with all of them 0 only the shortcut (plus a per-channel
bias) remains.

Computed efficiently: the three expand convs are one 1×1 conv to Σh_k channels (a per-channel BN after it
is the same as one BN per path) and the three projections are one 1×1 conv over the concatenated hidden
channels, which equals the sum of the per-path projections.

An optional lightweight transformer (or Non-local block) is a further parallel path on the block input,
added to the output; SE re-weights the conv features (supplement Table 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from hrnas.models.attention import NonLocal, SqueezeExcite
from hrnas.models.layers import NormConfig, make_activation
from hrnas.models.transformer import LightweightTransformer

KERNEL_SIZES = (3, 5, 7)
ATTENTION_TYPES = ("none", "transformer", "se", "nonlocal")
PLACEMENTS = ("res", "res+down")


@dataclass(frozen=True)
class AttentionConfig:
    """Which attention module the searching blocks carry, and where.

    ``type``: none | transformer | se | nonlocal. ``placement``: ``res`` = the residual blocks only
    (stride 1, same width: 44 in every HR-NAS supernet), ``res+down`` = every searching block.
    Transformer settings: ``tokens`` n, ``proj`` s, ``decoder`` (False = encoder only),
    ``token_mode`` channel | spatial.
    """

    type: str = "transformer"
    placement: str = "res"
    tokens: int = 64
    proj: int = 8
    decoder: bool = True
    token_mode: str = "channel"

    def applies_to(self, inp: int, oup: int, stride: int) -> bool:
        if self.type == "none":
            return False
        return self.placement == "res+down" or (stride == 1 and inp == oup)


class SearchingBlock(nn.Module):
    """Multi-kernel inverted residual whose per-kernel widths (and transformer tokens) are searched.

    Args:
        inp, oup, stride: input/output channels and stride (1 or 2).
        hidden: hidden channels per kernel path, aligned with ``kernels`` (0 removes the path).
        kernels: depthwise kernel sizes of the paths.
        tokens: transformer tokens (0: no transformer in this block); used when ``attention.type`` is
            ``transformer``.
    """

    def __init__(self, inp: int, oup: int, stride: int, hidden: Sequence[int],
                 kernels: Sequence[int] = KERNEL_SIZES, act: str = "relu", norm: NormConfig = NormConfig(),
                 attention: AttentionConfig | None = None, tokens: int = 0):
        super().__init__()
        if len(hidden) != len(kernels):
            raise ValueError(f"hidden {list(hidden)} and kernels {list(kernels)} differ in length")
        self.inp, self.oup, self.stride = inp, oup, stride
        self.act_name, self.norm_cfg = act, norm
        live = [(k, h) for k, h in zip(kernels, hidden) if h > 0]
        self.kernels = tuple(k for k, _ in live)
        self.hidden = tuple(h for _, h in live)
        self.act = make_activation(act)
        total = sum(self.hidden)
        if total:
            self.expand = nn.Conv2d(inp, total, 1, bias=False)
            self.expand_bn = norm.bn(total)
            self.dw = nn.ModuleList(nn.Conv2d(h, h, k, stride, k // 2, groups=h, bias=False) for k, h in live)
            self.dw_bn = nn.ModuleList(norm.bn(h) for h in self.hidden)
            self.project = nn.Conv2d(total, oup, 1, bias=False)
            self.project_bn = norm.bn(oup)
        else:
            self.expand = self.expand_bn = self.dw = self.dw_bn = self.project = self.project_bn = None
        # A block whose paths were all removed keeps the constant its projection BN produced (see
        # hrnas.search.shrink); a freshly built one starts from 0.
        self.bias = nn.Parameter(torch.zeros(oup)) if not total else None
        self.residual = stride == 1 and inp == oup
        self.shortcut = (nn.Identity() if self.residual else
                         nn.Conv2d(inp, oup, 1, stride, groups=math.gcd(inp, oup), bias=False))
        self.transformer = self.se = self.non_local = None
        attention = attention or AttentionConfig(type="none")
        if attention.applies_to(inp, oup, stride):
            if attention.type == "transformer" and tokens > 0:
                self.transformer = LightweightTransformer(inp, oup, tokens, attention.proj, attention.decoder,
                                                          attention.token_mode, downsample=stride == 2)
            elif attention.type == "se":
                self.se = SqueezeExcite(oup, max(1, round(inp * 0.25)))
            elif attention.type == "nonlocal" and self.residual:
                self.non_local = NonLocal(inp)

    @property
    def tokens(self) -> int:
        return self.transformer.num_tokens if self.transformer is not None else 0

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel paths: fused expand, per-kernel depthwise, fused projection."""
        h = self.act(self.expand_bn(self.expand(x)))
        if len(self.hidden) > 1:
            # Channel slices of a channels_last tensor are strided; make them dense in the same layout,
            # otherwise the depthwise convs fall back to a far slower NCHW kernel on the CPU.
            fmt = torch.channels_last if h.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            parts = [p.contiguous(memory_format=fmt) for p in h.split(self.hidden, dim=1)]
            h = torch.cat([self.act(bn(dw(p))) for p, dw, bn in zip(parts, self.dw, self.dw_bn)], dim=1)
        else:
            h = self.act(self.dw_bn[0](self.dw[0](h)))
        y = self.project_bn(self.project(h))
        return self.se(y) if self.se is not None else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shortcut(x)
        if self.expand is not None:
            out = out + self.conv_features(x)
        else:
            out = out + self.bias.view(1, -1, 1, 1)
        if self.transformer is not None:
            out = out + self.transformer(x)
        if self.non_local is not None:
            out = out + self.non_local(x)
        return out

    def extra_repr(self) -> str:
        return f"{self.inp}->{self.oup}, stride={self.stride}, kernels={self.kernels}, hidden={self.hidden}"
