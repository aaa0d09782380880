"""DeepLabv3+ decoder (Chen et al. 2018), the retrain network's head after the ASPP."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.operations import ConvBNReLU


class Decoder(nn.Module):
    """Fuse the ASPP output with stride-4 low-level features and predict class logits.

    Low-level features are projected by a 1x1 conv to `low_level_proj` channels (48 in
    DeepLabv3+, so they do not outweigh the 256 ASPP channels), the ASPP output is upsampled
    bilinearly to their size, both are concatenated and refined by two 3x3 convs of
    `channels`, then a 1x1 conv gives `num_classes` logits at stride 4.
    """

    def __init__(self, low_level_channels: int, aspp_channels: int, num_classes: int,
                 low_level_proj: int = 48, channels: int = 256):
        super().__init__()
        self.low_level = ConvBNReLU(low_level_channels, low_level_proj, 1)
        self.fuse = nn.Sequential(
            ConvBNReLU(aspp_channels + low_level_proj, channels, 3),
            ConvBNReLU(channels, channels, 3),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        # x: (N, aspp_channels, h, w) at the path's final stride; low_level: (N, C_low, H/4, W/4)
        low_level = self.low_level(low_level)
        x = F.interpolate(x, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([x, low_level], dim=1)))  # (N, K, H/4, W/4)
