"""The searching block's k×k depthwise convolution with a faster weight gradient on the CPU.

On the CPU, oneDNN's channels_last depthwise weight gradient is fast for kernels at most 3 wide and
several times slower for the 5×5 and 7×7 kernels of HR-NAS (paper §3.1: k ∈ {3, 5, 7}): 7×7 takes
about 7× its forward pass, 7×3 about as long as its forward pass. :func:`depthwise_conv2d` computes the same
convolution and input gradient as ``F.conv2d(..., groups=C)`` and the weight gradient as the
concatenation of the gradients of column strips of the kernel (7 = 2 + 3 + 2, 5 = 1 + 3 + 1), each the
gradient of a narrow depthwise convolution of the input (the centre strip) or of a copy of it shifted by
the strip's column offset (the others). The result equals the direct weight gradient up to float
rounding (tested). Used for stride-1 convolutions of channels_last CPU tensors (the training layout) of
at least 8×8 pixels and as many columns as the kernel, where it is faster (one thread, 7×7 on
2×96×128×256, the first branch at 512×1024: 259 ms direct, 43 ms in strips); other inputs take
``F.conv2d`` unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

STRIP_WIDTH = 3  # the widest kernel whose weight gradient oneDNN computes at full speed
MIN_PIXELS = 64  # below this (per image) the direct weight gradient is faster


def _strips(kernel: int) -> list[tuple[int, int]]:
    """Column ranges [c0, c1) of a kernel: the centre ``STRIP_WIDTH`` columns, then the columns left and
    right of them (7: [2, 5), [0, 2), [5, 7); 5: [1, 4), [0, 1), [4, 5))."""
    centre = kernel // 2 - STRIP_WIDTH // 2
    ranges = [(centre, centre + STRIP_WIDTH)]
    ranges += [(c0, min(c0 + STRIP_WIDTH, centre)) for c0 in range(0, centre, STRIP_WIDTH)]
    ranges += [(c0, min(c0 + STRIP_WIDTH, kernel)) for c0 in range(centre + STRIP_WIDTH, kernel, STRIP_WIDTH)]
    return ranges


def _strip_weight_grad(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Weight gradient of a stride-1 depthwise conv, strip by strip of ≤ ``STRIP_WIDTH`` kernel columns.

    The centre strip is the gradient of a narrow conv of ``x`` itself (width padding 1); a strip of columns
    [c0, c1) off the centre reads ``x`` shifted by c0 - padding columns (a padded or cropped copy)."""
    channels, _, kh, kw = weight.shape
    grads = {}
    for c0, c1 in _strips(kw):
        if c0 == kw // 2 - STRIP_WIDTH // 2:  # output column o reads input columns o + j - 1
            shifted, pad_w = x, STRIP_WIDTH // 2
        else:  # output column o reads input columns o + c0 + j - padding, j < width
            shifted, pad_w = F.pad(x, (padding - c0, c1 - 1 - padding)), 0
        strip = weight[..., c0:c1].contiguous(memory_format=torch.channels_last)
        grads[c0] = torch.ops.aten.convolution_backward(
            grad_out, shifted, strip, None, (1, 1), (padding, pad_w), (1, 1), False, (0, 0), channels,
            (False, True, False))[1]
    return torch.cat([grads[c0] for c0 in sorted(grads)], dim=-1)


class _DepthwiseStrips(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, (ctx.stride,) * 2, (ctx.padding,) * 2, (1, 1), False, (0, 0),
                weight.shape[0], (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            grad_w = _strip_weight_grad(grad_out, x, weight, ctx.padding)
        return grad_x, grad_w, None, None


def uses_strips(x: torch.Tensor, weight: torch.Tensor, stride: int) -> bool:
    """Whether :func:`depthwise_conv2d` takes the strip path: a float32 channels_last CPU input (a channel
    slice of one is fine) needing a weight gradient, a kernel wider than ``STRIP_WIDTH``, stride 1, at
    least ``MIN_PIXELS`` pixels per image and as many columns as the kernel (measured: strided and small
    inputs are faster direct)."""
    return (x.device.type == "cpu" and weight.shape[-1] > STRIP_WIDTH and x.dim() == 4 and stride == 1
            and x.shape[-2] * x.shape[-1] >= MIN_PIXELS and x.shape[-1] >= weight.shape[-1]
            and x.stride(1) == 1 and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and torch.is_grad_enabled() and weight.requires_grad)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding, groups=C)`` for a square depthwise kernel."""
    if uses_strips(x, weight, stride):
        return _DepthwiseStrips.apply(x, weight, stride, padding)
    return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])


class DepthwiseConv2d(nn.Conv2d):
    """A k×k depthwise ``nn.Conv2d`` (groups = channels, no bias, padding k // 2) computed by
    :func:`depthwise_conv2d`, or by the stock convolution with ``plain=True`` (called through the module
    either way, so forward hooks such as the profiler's see it)."""

    def __init__(self, channels: int, kernel: int, stride: int = 1):
        super().__init__(channels, channels, kernel, stride, kernel // 2, groups=channels, bias=False)

    def forward(self, x: torch.Tensor, plain: bool = False) -> torch.Tensor:
        if plain:
            return super().forward(x)
        return depthwise_conv2d(x, self.weight, self.stride[0], self.padding[0])
