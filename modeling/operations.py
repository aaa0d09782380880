"""Candidate operations (SPEC section 2) and the small building blocks around them.

`OPS` maps each name in `PRIMITIVES` to a factory `(channels, affine) -> nn.Module`, one
module per edge, as the retrained network uses them. The supernet does not instantiate these
per edge: it evaluates the same mathematics for all edges that read one state at once
(`modeling/search_cell.py`), which is what makes the search fast.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.search_space import PRIMITIVES

ATROUS_DILATION = 2


class Zero(nn.Module):
    """The `none` operation: a zero tensor of the input's shape."""

    def forward(self, x):
        return x.mul(0.0)


class ReLUConvBN(nn.Module):
    """ReLU, conv (no bias), BN: the DARTS pre-activation unit."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, affine: bool = True):
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """(ReLU, depthwise k x k, pointwise 1x1, BN) applied twice (SPEC section 2)."""

    def __init__(self, channels: int, kernel_size: int, affine: bool = True):
        super().__init__()
        pad = (kernel_size - 1) // 2
        layers = []
        for _ in range(2):
            layers += [
                nn.ReLU(inplace=False),
                nn.Conv2d(channels, channels, kernel_size, 1, pad, groups=channels, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels, affine=affine),
            ]
        self.op = nn.Sequential(*layers)

    def forward(self, x):
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Stride-2 reduction: ReLU, two offset 1x1 stride-2 convs concatenated, BN.

    Odd sizes round up (like a stride-2 3x3 conv with padding 1), so that every level's size
    is ceil(previous / 2) whatever the crop.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        # Stride 1 on the subsampled pixels: a 1x1 stride-2 conv is a 1x1 conv of the even
        # pixels. Subsampling first also keeps clear of oneDNN's channels-last 1x1 stride-2
        # backward, which corrupts the heap when c_in < 8 (torch 2.13 CPU).
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = F.relu(x)
        h, w = x.shape[-2:]
        even = x[:, :, ::2, ::2]
        odd = F.pad(x[:, :, 1::2, 1::2], (0, w % 2, 0, h % 2))
        return self.bn(torch.cat([self.conv_1(even), self.conv_2(odd)], dim=1))


class ConvBNReLU(nn.Module):
    """Conv (no bias), BN, ReLU: the stem and head unit."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1):
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.op = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel_size, stride, padding, dilation, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.op(x)


def stem(c_in: int = 3, widths: tuple[int, int, int] = (64, 64, 128)) -> nn.Sequential:
    """Three 3x3 convs, stride 2 in the first and third: the image at output stride 4."""
    return nn.Sequential(
        ConvBNReLU(c_in, widths[0], 3, stride=2),
        ConvBNReLU(widths[0], widths[1], 3),
        ConvBNReLU(widths[1], widths[2], 3, stride=2),
    )


class Upsample(nn.Module):
    """Move one level up: bilinear resize to the target size, then ReLU-conv1x1-BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        self.conv = ReLUConvBN(c_in, c_out, 1, affine=affine)

    def forward(self, x, size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.conv(x)


OPS = {
    "none": lambda c, affine: Zero(),
    "max_pool_3x3": lambda c, affine: nn.MaxPool2d(3, stride=1, padding=1),
    "avg_pool_3x3": lambda c, affine: nn.AvgPool2d(3, stride=1, padding=1,
                                                   count_include_pad=False),
    "skip_connect": lambda c, affine: nn.Identity(),
    "sep_conv_3x3": lambda c, affine: SepConv(c, 3, affine),
    "sep_conv_5x5": lambda c, affine: SepConv(c, 5, affine),
    "atrous_conv_3x3": lambda c, affine: ReLUConvBN(c, c, 3, dilation=ATROUS_DILATION,
                                                    affine=affine),
    "atrous_conv_5x5": lambda c, affine: ReLUConvBN(c, c, 5, dilation=ATROUS_DILATION,
                                                    affine=affine),
}
assert tuple(OPS) == PRIMITIVES, "OPS must follow PRIMITIVES order"
