"""Small building blocks shared by the super network: conv-BN-act, activations, BN settings."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from hrnas.errors import UserError

ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    """ReLU for the searches; Swish (SiLU) for the HR-NAS†‡ ImageNet variant (supplement §1)."""
    if name not in ACTIVATIONS:
        raise UserError(f"activation: unknown value '{name}'; accepted: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name](inplace=True)


@dataclass(frozen=True)
class NormConfig:
    """BatchNorm settings of the authors' configs (momentum in PyTorch's convention)."""

    momentum: float = 0.01
    eps: float = 1e-3

    def bn(self, channels: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(channels, momentum=self.momentum, eps=self.eps)


class ConvBNAct(nn.Sequential):
    """k×k convolution → BatchNorm → activation (the stem and the classification head's 1×1)."""

    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, norm: NormConfig = NormConfig(),
                 act: str = "relu"):
        super().__init__(
            nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, bias=False),
            norm.bn(oup),
            make_activation(act),
        )
