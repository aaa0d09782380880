"""Candidate operations (paper section 3): the one operation table, and the building blocks
around it.

`OPS` maps each operation's name to a factory `(channels, stride, affine) -> nn.Module`. It is
the only list of operations: `PRIMITIVES` is its names, in its order, and the search (both
supernets), decoding, retraining and genotype files all take their operations from it. To add
a candidate operation, add one entry here: the plain supernet (`modeling/plain_supernet.py`)
runs it as it runs every operation, the fast supernet (`modeling/search_cell.py`) runs the
operations it has fast paths for and sends any other through the plain one, decoding can pick
it and retraining builds it. The order is free: columns of the alphas follow it, genotype files
name operations.

Stride 2 is for the operations of a cell that goes one level down and read one of its two
inputs, which arrive at the finer level (research/deeplab/core/nas_cell.py): a separable
convolution strides its first depthwise convolution, an atrous convolution resizes by 0.5 and
runs at rate 1, pools stride, and identity becomes a FactorizedReduce (DARTS' reduction-cell
skip; the released model has no identity). During the search every operation runs at stride 1
without affine batch norm (`affine=False`), and pools are followed by an affine-free batch norm,
as in DARTS.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.search_space import coarser

ATROUS_DILATION = 2


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to `size`, corners aligned as in the released model's
    resize_bilinear; x itself when it already has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class Zero(nn.Module):
    """The `none` operation: a zero tensor of the output's shape."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


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
    """(ReLU, depthwise k x k, pointwise 1x1, BN) applied twice (paper section 3); `stride`
    applies to the first depthwise convolution."""

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, affine: bool = True):
        super().__init__()
        pad = (kernel_size - 1) // 2
        layers = []
        for stage in range(2):
            layers += [
                nn.ReLU(inplace=False),
                nn.Conv2d(channels, channels, kernel_size, stride if stage == 0 else 1, pad,
                          groups=channels, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels, affine=affine),
            ]
        self.op = nn.Sequential(*layers)

    def forward(self, x):
        return self.op(x)


class AtrousConv(nn.Module):
    """ReLU, dense k x k convolution with dilation 2, BN (paper section 3). At stride 2, as the
    released model: ReLU, bilinear resize by 0.5, then the convolution at rate 1."""

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, affine: bool = True):
        super().__init__()
        self.stride = stride
        dilation = ATROUS_DILATION if stride == 1 else 1
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=dilation * (
            kernel_size - 1) // 2, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(channels, affine=affine)

    def forward(self, x):
        x = F.relu(x)
        if self.stride == 2:
            x = resize(x, coarser(x.shape[-2:]))
        return self.bn(self.conv(x))


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


# The retrained network's stem (paper section 5.2): 64, 64, 128 filters, strides 2, 1, 2.
RETRAIN_STEM = ((64, 2), (64, 1), (128, 2))
# The search network's two-layer stem (paper section 3.2), each layer halving the resolution.
SEARCH_STEM = ((64, 2), (128, 2))


class Stem(nn.Sequential):
    """3x3 ConvBNReLU layers, `layers` as (filters, stride) pairs, from the image to stride 4.

    `forward` returns its last output at stride 2 and its output at stride 4: H(l-2) and
    H(l-1) of the first cell, as in the released model's stem.
    """

    def __init__(self, c_in: int, layers):
        convs, stride = [], 1
        for filters, s in layers:
            convs.append(ConvBNReLU(c_in, filters, 3, stride=s))
            c_in, stride = filters, stride * s
        if stride != 4 or layers[-1][1] != 2:
            raise ValueError(f"a stem ends with a stride-2 layer at stride 4, got {layers}")
        super().__init__(*convs)

    def forward(self, x):
        # x: (N, 3, H, W) -> (N, C, H/2, W/2), (N, C', H/4, W/4)
        *first, last = self
        for conv in first:
            x = conv(x)
        return x, last(x)


class ResizeReLUConvBN(ReLUConvBN):
    """Bilinear resize to a given size (`resize`), then ReLU-conv1x1-BN: how a cell brings
    H(l-1) one level up and H(l-2) to the size it preprocesses at (released model)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__(c_in, c_out, 1, affine=affine)

    def forward(self, x, size):
        return super().forward(resize(x, size))


# The candidate operations, name -> (channels, stride, affine) -> module. `none` is the zero
# operation: it competes in the softmax, and decoding never keeps it.
OPS = {
    "none": lambda c, stride, affine: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1,
                                                           count_include_pad=False),
    "skip_connect": lambda c, stride, affine: (nn.Identity() if stride == 1
                                               else FactorizedReduce(c, c, affine)),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, 3, stride, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, 5, stride, affine),
    "atrous_conv_3x3": lambda c, stride, affine: AtrousConv(c, 3, stride, affine),
    "atrous_conv_5x5": lambda c, stride, affine: AtrousConv(c, 5, stride, affine),
}
PRIMITIVES: tuple[str, ...] = tuple(OPS)
NONE_OP = "none"


def skip_connect(x: torch.Tensor, dropout: float, training: bool) -> torch.Tensor:
    """skip_connect's output in the search: the input, with dropout at rate `dropout` while
    training (P-DARTS' operation-level dropout on skip connections, Chen et al. 2019, against a
    search that collapses to them; 0 is the paper's plain identity)."""
    return F.dropout(x, dropout, training) if dropout > 0 else x


def search_op(name: str, channels: int) -> nn.Module:
    """Operation `name` as the search runs it: stride 1, affine-free batch norm, and pools
    followed by an affine-free batch norm (DARTS)."""
    op = OPS[name](channels, 1, False)
    if "pool" in name:
        op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
    return op
