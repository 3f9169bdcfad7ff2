"""The searching block's k×k depthwise convolution with a faster weight gradient on the CPU.

On the CPU, oneDNN's channels_last depthwise weight gradient is fast for kernels at most 3 wide and
several times slower for the 5×5 and 7×7 kernels of HR-NAS (paper §3.1: k ∈ {3, 5, 7}): 7×7 takes
about 7× its forward pass, 7×3 about as long as its forward pass. :func:`depthwise_conv2d` computes the same
convolution and input gradient as ``F.conv2d(..., groups=C)`` and the weight gradient as the
concatenation of the gradients of column strips of the kernel (7 = 3 + 3 + 1, 5 = 3 + 2), each the
gradient of a narrow depthwise convolution of the input shifted by the strip's column offset. The
result equals the direct weight gradient up to float rounding (tested). Used for channels_last CPU
tensors (the training layout); other inputs take ``F.conv2d`` unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

STRIP_WIDTH = 3  # the widest kernel whose weight gradient oneDNN computes at full speed


def _strip_weight_grad(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int,
                       padding: int) -> torch.Tensor:
    """Weight gradient of a depthwise conv, strip by strip of ≤ ``STRIP_WIDTH`` kernel columns."""
    channels, _, kh, kw = weight.shape
    out_w = grad_out.shape[-1]
    strips = []
    for c0 in range(0, kw, STRIP_WIDTH):
        width = min(STRIP_WIDTH, kw - c0)
        # Output column o reads input columns stride·o + c0 + j - padding, j < width: pad (or crop) the
        # input so that column c0 - padding comes first and no padding is needed along the width.
        left = padding - c0
        right = stride * (out_w - 1) + c0 + width - 1 - padding - (x.shape[-1] - 1)
        shifted = F.pad(x, (left, right))
        strip = weight[..., c0:c0 + width].contiguous(memory_format=torch.channels_last)
        strips.append(torch.ops.aten.convolution_backward(
            grad_out, shifted, strip, None, (stride, stride), (padding, 0), (1, 1), False, (0, 0), channels,
            (False, True, False))[1])
    return torch.cat(strips, dim=-1)


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
            grad_w = _strip_weight_grad(grad_out, x, weight, ctx.stride, ctx.padding)
        return grad_x, grad_w, None, None


def uses_strips(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`depthwise_conv2d` takes the strip path for this input."""
    return (x.device.type == "cpu" and weight.shape[-1] > STRIP_WIDTH and x.dim() == 4
            and x.stride(1) == 1 and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and torch.is_grad_enabled() and weight.requires_grad)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding, groups=C)`` for a square depthwise kernel."""
    if uses_strips(x, weight):
        return _DepthwiseStrips.apply(x, weight, stride, padding)
    return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])


class DepthwiseConv2d(nn.Conv2d):
    """A k×k depthwise ``nn.Conv2d`` (groups = channels, no bias, padding k // 2) computed by
    :func:`depthwise_conv2d`."""

    def __init__(self, channels: int, kernel: int, stride: int = 1):
        super().__init__(channels, channels, kernel, stride, kernel // 2, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.stride[0], self.padding[0])
