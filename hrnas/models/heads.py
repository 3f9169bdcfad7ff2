"""Task heads of the HR-NAS super network (docs/authors-code.md §1.6).

* Classification: a searching block per branch widens it to 36/72/144/320, stride-2 blocks carry the
  sum down to 1/32, a 1×1 conv-BN-act to 1600, global average pooling, dropout and a linear classifier.
* Dense prediction (segmentation, keypoints, the KITTI BEV features): all branches are bilinearly
  upsampled to the 1/4 branch and concatenated (18+36+72+144 = 270 channels), one searching block maps
  them to ``head_channels`` (90; 180 for ADE20K) and a 1×1 conv predicts the classes at 1/4 resolution.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hrnas.models.hrnet import BlockFactory
from hrnas.models.layers import ConvBNAct

CLS_HEAD_CHANNELS = (36, 72, 144, 320)
CLS_LAST_CHANNELS = 1600


class ClassificationHead(nn.Module):
    def __init__(self, make: BlockFactory, branch_channels: Sequence[int], num_classes: int = 1000,
                 dropout: float = 0.2, head_channels: Sequence[int] = CLS_HEAD_CHANNELS,
                 last_channels: int = CLS_LAST_CHANNELS):
        super().__init__()
        self.incre = nn.ModuleList(make(f"head.incre{i}", c, h, 1, module="head", role="incre",
                                        branches=(i, i, i))
                                   for i, (c, h) in enumerate(zip(branch_channels, head_channels)))
        self.down = nn.ModuleList(make(f"head.down{i}", head_channels[i], head_channels[i + 1], 2, module="head",
                                       role="down", branches=(i, i + 1, i + 1))
                                  for i in range(len(head_channels) - 1))
        self.final = ConvBNAct(head_channels[-1], last_channels, 1, 1, make.norm, make.act)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        y = self.incre[0](xs[0])
        for i, down in enumerate(self.down):
            y = self.incre[i + 1](xs[i + 1]) + down(y)
        y = F.adaptive_avg_pool2d(self.final(y), 1).flatten(1)
        return self.classifier(y)


class DenseHead(nn.Module):
    """Concatenate all branches at 1/4, one searching block (``transform``), 1×1 classifier.

    ``num_classes=None`` returns the ``head_channels`` features (the KITTI BEV backbone).
    """

    def __init__(self, make: BlockFactory, branch_channels: Sequence[int], num_classes: int | None = 19,
                 head_channels: int = 90):
        super().__init__()
        self.transform = make("head.transform", sum(branch_channels), head_channels, 1, module="head",
                              role="transform", branches=(0, 0, 0))
        self.classifier = nn.Conv2d(head_channels, num_classes, 1) if num_classes else None
        self.out_channels = num_classes or head_channels

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        size = xs[0].shape[-2:]
        ups = [xs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in xs[1:]]
        y = self.transform(torch.cat(ups, dim=1))
        return self.classifier(y) if self.classifier is not None else y
