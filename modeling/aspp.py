"""Atrous spatial pyramid pooling (DeepLabv3), the head of search and retrain networks."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.operations import ConvBNReLU


class ASPP(nn.Module):
    """1x1 conv, 3x3 atrous convs at `rates`, and image pooling, each with BN and ReLU,
    concatenated and projected by a 1x1 conv-BN-ReLU to `channels`.

    Image pooling applies BN to one value per image and channel, so training needs batches of
    at least two images (the CLIs check this).
    """

    def __init__(self, in_channels: int, channels: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList([ConvBNReLU(in_channels, channels, 1)])
        self.branches.extend(ConvBNReLU(in_channels, channels, 3, dilation=r) for r in rates)
        self.image_pool = ConvBNReLU(in_channels, channels, 1)
        self.project = ConvBNReLU(channels * (len(rates) + 2), channels, 1)

    def forward(self, x):
        size = x.shape[-2:]
        pooled = self.image_pool(F.adaptive_avg_pool2d(x, 1))
        feats = [branch(x) for branch in self.branches]
        feats.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=False))
        return self.project(torch.cat(feats, dim=1))


class ASPPHead(nn.Module):
    """ASPP followed by a 1x1 conv to class logits (the search network's per-level head)."""

    def __init__(self, in_channels: int, channels: int, rate: int, num_classes: int):
        super().__init__()
        self.aspp = ASPP(in_channels, channels, (rate,))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.aspp(x))
