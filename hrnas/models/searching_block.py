"""The searching block of HR-NAS (paper §3.1, Fig. 2; docs/authors-code.md §1.3).

An inverted residual with one path per depthwise kernel size k ∈ {3, 5, 7}. Path k has h_k hidden
channels: 1×1 expand → BN → act → k×k depthwise (block stride) → BN → act. The BN after the depthwise
conv holds the scale factors γ that the search penalises and shrinks. The paths' outputs are projected by
1×1 convs, summed and normalised by one BN (linear bottleneck); the shortcut is the identity or a grouped
1×1 conv. Any h_k may be 0 (the path is removed); with all of them 0 only the shortcut (plus a per-channel
bias) remains.

Computed efficiently: the three expand convs are one 1×1 conv to Σh_k channels (a per-channel BN after it
is the same as one BN per path); the depthwise convs read channel slices of its output (views, no copies)
and the three projections share one weight over the concatenated hidden channels, applied path by path
and summed (:class:`PathProjection`), so neither a split nor a concatenation is kept for the backward
pass (a third less activation memory than copying them).

An optional lightweight transformer (or Non-local block) is a further parallel path on the block input,
added to the output (supplement Table 2). Optional Squeeze-and-Excitation (:class:`SEConfig`) re-weights
either the hidden features of the kernel paths before the projection (the authors' fused retraining
block, HR-NAS†‡ of supplement §1) or the block's conv output.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from hrnas.models.non_local import NonLocal
from hrnas.models.squeeze_excite import SqueezeExcite
from hrnas.models.depthwise import DepthwiseConv2d
from hrnas.models.layers import NormConfig, make_activation
from hrnas.models.transformer import LightweightTransformer

KERNEL_SIZES = (3, 5, 7)
ATTENTION_TYPES = ("none", "transformer", "nonlocal")
FAST_PATHS = ("auto", True, False)
# ``auto``: a block computes its kernel paths the fast way when they hold at least this many hidden activations
# (batch × Σh × H × W at the block's input resolution), else the plain way. Forward + backward of single blocks,
# channels_last, one thread, 2-core AMD EPYC: below it the per-path kernels cost more launches than they save
# (Σh·H·W·batch 55 K / 110 K / 221 K: plain 1.07× / 1.14× / 1.03× faster), above it the fast paths win
# (442 K: 1.15–1.21×, 885 K: 1.09×, the tiny dense head's 3.3 M: 1.18×).
FAST_PATHS_MIN_ELEMENTS = 300_000


def check_fast_paths(setting) -> None:
    """``train.fast_paths`` is auto, true or false."""
    if not (isinstance(setting, bool) or setting == "auto"):  # (not merely equal to one: 1 == True)
        raise ValueError(f"fast_paths={setting!r}: expected one of auto, true, false")


PLACEMENTS = ("res", "res+down")
SE_POSITIONS = ("hidden", "output")


def _placed(placement: str, inp: int, oup: int, stride: int) -> bool:
    """``res``: the residual blocks only (stride 1, same width: 44 in every HR-NAS supernet);
    ``res+down``: every searching block."""
    return placement == "res+down" or (stride == 1 and inp == oup)


@dataclass(frozen=True)
class AttentionConfig:
    """Which attention module the searching blocks carry, and where.

    ``type``: none | transformer | nonlocal. ``placement``: ``res`` = the residual blocks only
    (stride 1, same width: 44 in every HR-NAS supernet), ``res+down`` = every searching block;
    ``branches``: only the blocks computing at these branches (branch b at 1/2^(b+2) of the input;
    None = all). Transformer settings: ``tokens`` n, ``proj`` s, ``decoder`` (False = encoder only),
    ``token_mode`` channel | spatial. Non-local: inner width round(``nonlocal_ratio`` · C) (Wang et al.:
    0.5).
    """

    type: str = "transformer"
    placement: str = "res"
    tokens: int = 64
    proj: int = 8
    decoder: bool = True
    token_mode: str = "channel"
    branches: tuple[int, ...] | None = None
    nonlocal_ratio: float = 0.5

    def applies_to(self, inp: int, oup: int, stride: int, branch: int | None = None) -> bool:
        return (self.type != "none" and _placed(self.placement, inp, oup, stride)
                and (self.branches is None or branch in self.branches))


@dataclass(frozen=True)
class SEConfig:
    """Squeeze-and-Excitation in the searching blocks (independent of the attention module).

    ``ratio``: None = no SE; else the gate's bottleneck has max(1, round(ratio · inp)) channels, inp =
    the block's input width (as the authors' code). ``on``: ``hidden`` = gate the kernel paths' Σh_k
    hidden channels before the projection (the authors' ``InvertedResidualChannelsFused``, ratio 0.5,
    which their README uses to retrain HR-NAS†‡); ``output`` = gate the block's ``oup`` conv output
    before the shortcut is added. ``placement``: res | res+down as for :class:`AttentionConfig`.
    A block whose paths were all removed has no SE.
    """

    ratio: float | None = None
    on: str = "hidden"
    placement: str = "res+down"

    def applies_to(self, inp: int, oup: int, stride: int) -> bool:
        return self.ratio is not None and _placed(self.placement, inp, oup, stride)


class PathExpansion(nn.Conv2d):
    """The paths' 1×1 expand convs as one conv to Σh_k channels (one weight, so the search shrinks it like
    any conv). Given the paths' widths it is applied path by path, each path's hidden features coming out
    as a tensor of their own in the input's memory layout: the depthwise convs then read them without the
    copy that a channel slice of one channels_last tensor costs, and the backward pass needs no
    concatenation of the paths' gradients."""

    def __init__(self, inp: int, hidden: int):
        super().__init__(inp, hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, widths: Sequence[int] | None = None):
        if widths is None:
            return super().forward(x)
        return [F.conv2d(x, w) for w in self.weight.split(list(widths), dim=0)]


class PathBatchNorm(nn.BatchNorm2d):
    """One BN over the concatenated hidden channels of the paths, applied to the paths one by one (a
    per-channel BN, so the same result): its statistics and parameters are slices of one set of buffers."""

    def forward(self, x):
        if isinstance(x, torch.Tensor):
            return super().forward(x)
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        keep_stats = not self.training or self.track_running_stats
        out, start = [], 0
        for p in x:
            c = slice(start, start + p.shape[1])
            start = c.stop
            out.append(F.batch_norm(p, self.running_mean[c] if keep_stats else None,
                                    self.running_var[c] if keep_stats else None, self.weight[c], self.bias[c],
                                    use_batch_stats, momentum or 0.0, self.eps))
        return out


class PathProjection(nn.Conv2d):
    """The paths' 1×1 projections as one conv over their concatenated hidden channels (one weight, so the
    search shrinks it like any conv), applied to the paths one by one and summed: the same result as
    convolving the concatenation, without materialising it."""

    def __init__(self, hidden: int, oup: int):
        super().__init__(hidden, oup, 1, bias=False)

    def forward(self, paths: Sequence[torch.Tensor]) -> torch.Tensor:
        weights = self.weight.split([p.shape[1] for p in paths], dim=1)
        out = F.conv2d(paths[0], weights[0])
        for p, w in zip(paths[1:], weights[1:]):
            out = out + F.conv2d(p, w)
        return out


class GroupedShortcut(nn.Conv2d):
    """The shortcut of a block that changes width or resolution: a grouped 1×1 conv with groups =
    gcd(inp, oup) and no bias (the authors' ``residual``). At stride 1 on the CPU each output channel is
    computed as the sum of its group's few products (1-4 input channels per group in HR-NAS): oneDNN's
    grouped 1×1 convolution is slow for such groups (the dense head's 270→90, forward + backward, one
    thread: 13.2 ms at the tiny 64×128 batch of 8 against 4.7 ms, 280 ms at 512×1024 batch 2 against
    138 ms). Strided shortcuts and other devices use the convolution."""

    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__(inp, oup, 1, stride, groups=math.gcd(inp, oup), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] != 1 or x.device.type != "cpu":
            return super().forward(x)
        n, c, h, w = x.shape
        g, out = self.groups, self.out_channels
        pixels = x.permute(0, 2, 3, 1).reshape(n * h * w, g, 1, c // g)  # a view of a channels_last input
        y = (pixels * self.weight.view(1, g, out // g, c // g)).sum(-1)
        return y.reshape(n, h, w, out).permute(0, 3, 1, 2)  # channels_last


class SearchingBlock(nn.Module):
    """Multi-kernel inverted residual whose per-kernel widths (and transformer tokens) are searched.

    Args:
        inp, oup, stride: input/output channels and stride (1 or 2).
        hidden: hidden channels per kernel path, aligned with ``kernels`` (0 removes the path).
        kernels: depthwise kernel sizes of the paths.
        tokens: transformer tokens (0: no transformer in this block); used when ``attention.type`` is
            ``transformer``.
        se: Squeeze-and-Excitation settings (default: none).
        branch: the branch at whose resolution the block computes (for ``attention.branches``).
    """

    def __init__(self, inp: int, oup: int, stride: int, hidden: Sequence[int],
                 kernels: Sequence[int] = KERNEL_SIZES, act: str = "relu", norm: NormConfig = NormConfig(),
                 attention: AttentionConfig | None = None, tokens: int = 0, se: SEConfig | None = None,
                 branch: int | None = None):
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
            self.expand = PathExpansion(inp, total)
            self.expand_bn = PathBatchNorm(total, eps=norm.eps, momentum=norm.momentum)
            self.dw = nn.ModuleList(DepthwiseConv2d(h, k, stride) for k, h in live)
            self.dw_bn = nn.ModuleList(norm.bn(h) for h in self.hidden)
            self.project = PathProjection(total, oup)
            self.project_bn = norm.bn(oup)
        else:
            self.expand = self.expand_bn = self.dw = self.dw_bn = self.project = self.project_bn = None
        # A block whose paths were all removed keeps the constant its projection BN produced (see
        # hrnas.search.shrink); a freshly built one starts from 0.
        self.bias = nn.Parameter(torch.zeros(oup)) if not total else None
        self.residual = stride == 1 and inp == oup
        self.shortcut = nn.Identity() if self.residual else GroupedShortcut(inp, oup, stride)
        self.grad_checkpointing = False  # recompute the kernel paths in backward (HRNet.set_grad_checkpointing)
        self.fast_paths = "auto"  # per-path expand and strip depthwise gradients (HRNet.set_fast_paths)
        self.transformer = self.non_local = None
        attention = attention or AttentionConfig(type="none")
        if attention.applies_to(inp, oup, stride, branch):
            if attention.type == "transformer" and tokens > 0:
                self.transformer = LightweightTransformer(inp, oup, tokens, attention.proj, attention.decoder,
                                                          attention.token_mode, downsample=stride == 2)
            elif attention.type == "nonlocal" and self.residual:
                self.non_local = NonLocal(inp, attention.nonlocal_ratio)
        se = se or SEConfig()
        self.se = self.se_on = None
        if total and se.applies_to(inp, oup, stride):
            self.se_on = se.on
            self.se = SqueezeExcite(total if se.on == "hidden" else oup, max(1, round(inp * se.ratio)), act)

    @property
    def tokens(self) -> int:
        return self.transformer.num_tokens if self.transformer is not None else 0

    def uses_fast_paths(self, x: torch.Tensor) -> bool:
        """Whether the kernel paths of input ``x`` are computed the fast way (``fast_paths``: True, False, or
        ``auto``: from :data:`FAST_PATHS_MIN_ELEMENTS` hidden activations on)."""
        if not isinstance(self.expand_bn, PathBatchNorm):  # (SyncBatchNorm replaces it)
            return False
        if self.fast_paths == "auto":
            return x.numel() // self.inp * sum(self.hidden) >= FAST_PATHS_MIN_ELEMENTS
        return bool(self.fast_paths)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel paths: fused expand, per-kernel depthwise, fused projection (and SE)."""
        if self.uses_fast_paths(x):
            hidden = self.expand_bn(self.expand(x, self.hidden))
            paths = [self.act(bn(dw(self.act(h)))) for h, dw, bn in zip(hidden, self.dw, self.dw_bn)]
        else:  # the plain computation: one expand tensor, channel slices of it, stock convolutions
            h = self.act(self.expand_bn(self.expand(x)))
            paths = [self.act(bn(dw(p, plain=True)))
                     for p, dw, bn in zip(h.split(self.hidden, dim=1), self.dw, self.dw_bn)]
        if self.se_on == "hidden":  # SE over the concatenated hidden channels (the authors' fused block)
            paths = self.se(paths)
        y = self.project_bn(self.project(paths))
        if self.se_on == "output":
            y = self.se(y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shortcut(x)
        if self.expand is None:
            out = out + self.bias.view(1, -1, 1, 1)
        elif self.grad_checkpointing and self.training and torch.is_grad_enabled():
            out = out + checkpoint(self.conv_features, x, use_reentrant=False,
                                   context_fn=lambda: (contextlib.nullcontext(), _frozen_running_stats(self)))
        else:
            out = out + self.conv_features(x)
        if self.transformer is not None:
            out = out + self.transformer(x)
        if self.non_local is not None:
            out = out + self.non_local(x)
        return out

    def extra_repr(self) -> str:
        return f"{self.inp}->{self.oup}, stride={self.stride}, kernels={self.kernels}, hidden={self.hidden}"


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module):
    """The recomputation of a checkpointed forward normalises with the batch statistics like the
    original pass but must not update the BN running statistics a second time: momentum 0 keeps them
    (bit for bit), and the batch counter is put back."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]  # no device sync in backward
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
