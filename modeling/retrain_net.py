"""The retrained Auto-DeepLab network built from a Genotype (paper section 5.2).

    stem (3x3 convs of 64, 64, 128; stride 2 in the first and third) -> stride 4
    12 cells along genotype.network_path                               -> stride 4 * 2^level
    ASPP (256 filters) at the path's final stride
    DeepLabv3+ decoder with stride-4 low-level features                -> logits at input size

Cells follow the released model (tensorflow/models, research/deeplab/core/nas_network.py and
nas_cell.py); with its parameter counting this reproduces the paper's Table 2 parameter counts
to within 0.1 % (`tests/test_retrain_model.py`):

- Inputs. H(l-1) is the previous cell's output; H(l-2) the output of the cell two layers back
  on the path (`prev_prev_level`), the stem's stride-2 and stride-4 outputs for the first two
  cells. A cell one level up from H(l-1) first resizes H(l-1) bilinearly to its own size. Then
  H(l-2) is resized bilinearly to H(l-1)'s size where it differs, and both get ReLU-conv1x1-BN
  to C = F * 2^level channels at that size.
- A cell one level down (stride 2) therefore preprocesses both inputs at the finer resolution
  of H(l-1), and only the operations that read input 0 or 1 apply the stride (see
  `modeling/operations.py`); the operations reading blocks run at the cell's own resolution.
- Resizes inside cells align corners, as the released model's.
- Cell output: concatenation of the last `block_multiplier` blocks, C channels each.
- Atrous convolutions are dense (paper section 3); ASPP and decoder convs are dense too.
- ASPP rates are DeepLabv3's (6, 12, 18) at output stride 16, scaled by 16 / final stride,
  so that they cover the same image extent whatever level the path ends at.
- Low-level features for the decoder: the output of the last cell on the path that sits at
  level 0 (stride 4). A path that never sits at level 0 uses the stem's output (stride 4,
  128 channels) instead. Their channel count follows from the path, never hard-coded.
- Retrain BN layers are affine. Optional drop path (NASNet / DARTS) on every non-identity op,
  with a drop probability the training loop schedules (`set_drop_path_prob`).

Where this departs from the released model: a cell always projects H(l-2) by its 1x1
convolution (the released one skips it when the widths already agree, which happens only
for some F and paths), and resizes go to each level's exact size (`level_sizes`) rather than
the released model's (n - 1) * 2 + 1 when going up, which differs only for even sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.aspp import ASPP
from modeling.decoder import Decoder
from modeling.genotypes import Genotype
from modeling.operations import OPS, RETRAIN_STEM, ReLUConvBN, ResizeReLUConvBN, Stem
from modeling.search_space import (STEM_LEVELS, level_channels, level_sizes, level_stride,
                                   prev_prev_level)

# DeepLabv3's ASPP rates at output stride 16; other strides scale them by 16 / stride.
ASPP_REFERENCE_STRIDE = 16
ASPP_REFERENCE_RATES = (6, 12, 18)
# Filter multipliers of the paper's Auto-DeepLab-S / M / L (paper Table 2).
PAPER_FILTER_MULTIPLIERS = {"autodeeplab-s": 20, "autodeeplab-m": 32, "autodeeplab-l": 48}


def aspp_rates(stride: int) -> tuple[int, ...]:
    """ASPP atrous rates at output `stride`: (6, 12, 18) at 16, (12, 24, 36) at 8, ..."""
    return tuple(max(1, r * ASPP_REFERENCE_STRIDE // stride) for r in ASPP_REFERENCE_RATES)


@dataclass(frozen=True)
class RetrainConfig:
    """Constructor arguments of `AutoDeepLab`; `to_dict()` goes into checkpoints."""

    num_classes: int
    genotype: Genotype
    filter_multiplier: int = 20
    block_multiplier: int = 5
    stem_widths: tuple[int, int, int] = tuple(filters for filters, _ in RETRAIN_STEM)
    aspp_channels: int = 256
    low_level_proj: int = 48
    decoder_channels: int = 256

    def __post_init__(self):
        object.__setattr__(self, "stem_widths", tuple(self.stem_widths))
        if len(self.stem_widths) != len(RETRAIN_STEM):
            raise ValueError(f"stem_widths: one width per stem layer ({len(RETRAIN_STEM)}), "
                             f"got {self.stem_widths}")
        if not 1 <= self.block_multiplier <= self.genotype.steps:
            raise ValueError(f"block_multiplier must be 1..{self.genotype.steps} (the cell's "
                             f"blocks), got {self.block_multiplier}")

    def cell_channels(self, level: int) -> int:
        """Output channels of a cell at `level`: block_multiplier * F * 2^level."""
        return self.block_multiplier * level_channels(self.filter_multiplier, level)

    def to_dict(self) -> dict:
        """Plain-JSON form (the genotype as its `to_json`), loadable with weights_only=True."""
        return {"num_classes": self.num_classes, "genotype": self.genotype.to_json(),
                "filter_multiplier": self.filter_multiplier,
                "block_multiplier": self.block_multiplier,
                "stem_widths": list(self.stem_widths), "aspp_channels": self.aspp_channels,
                "low_level_proj": self.low_level_proj,
                "decoder_channels": self.decoder_channels}

    @classmethod
    def from_dict(cls, d: dict) -> "RetrainConfig":
        """Inverse of `to_dict`."""
        d = dict(d)
        d["genotype"] = Genotype.from_json(d["genotype"])
        return cls(**d)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability `drop_prob`, rescale the rest (NASNet)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


class RetrainCell(nn.Module):
    """One cell of the path: preprocess both inputs, then the genotype's blocks.

    `direction` is this cell's level minus the previous cell's: +1 (down in resolution: the
    inputs are preprocessed at H(l-1)'s finer size and the operations on inputs 0 and 1
    stride), 0, or -1 (up: H(l-1) resized to this level first). Operations are built in
    `genotype.cell` order, block by block, and applied in that same order (`self.ops[i]`
    reads `self.inputs[i]`).
    """

    def __init__(self, cell, c_prev_prev: int, c_prev: int, channels: int, direction: int,
                 block_multiplier: int):
        super().__init__()
        if direction not in (-1, 0, 1):
            raise ValueError(f"a cell moves at most one level, got direction {direction}")
        self.direction = direction
        self.preprocess_prev = (ResizeReLUConvBN(c_prev, channels) if direction == -1
                                else ReLUConvBN(c_prev, channels, 1))
        self.preprocess_prev_prev = ResizeReLUConvBN(c_prev_prev, channels)
        self.block_multiplier = block_multiplier
        self.ops = nn.ModuleList()
        self.inputs: list[int] = []
        for pairs in cell:
            for inp, op in pairs:
                stride = 2 if direction == 1 and inp < 2 else 1  # inputs 0 and 1 only
                self.ops.append(OPS[op](channels, stride, True))
                self.inputs.append(inp)
        self.drop_prob = 0.0

    def forward(self, prev_prev: torch.Tensor, prev: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        # prev: (N, c_prev, h', w') one level away at most; size: this level's (h, w)
        if self.direction == -1:
            s1 = self.preprocess_prev(prev, size)  # (N, C, h, w)
        else:
            s1 = self.preprocess_prev(prev)  # (N, C, h', w'): finer than (h, w) going down
        s0 = self.preprocess_prev_prev(prev_prev, s1.shape[-2:])
        states = [s0, s1]  # input 0 = H(l-2), 1 = H(l-1)
        for first in range(0, len(self.ops), 2):
            block = 0
            for op, inp in zip(self.ops[first:first + 2], self.inputs[first:first + 2]):
                h = op(states[inp])  # (N, C, h, w)
                if self.training and self.drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, self.drop_prob)
                block = block + h
            states.append(block)
        return torch.cat(states[-self.block_multiplier:], dim=1)  # (N, B * C, h, w)


class AutoDeepLab(nn.Module):
    """The retrained network of one genotype; `forward(images)` -> logits at the input size."""

    def __init__(self, config: RetrainConfig):
        super().__init__()
        self.config = config
        path = config.genotype.network_path
        self.stem = Stem(3, [(w, stride) for w, (_, stride) in zip(config.stem_widths,
                                                                   RETRAIN_STEM)])
        # Level of every layer's one node; the stem's stride-2 and stride-4 outputs play
        # layers -2 and -1 (module docstring).
        self.path_levels = {**STEM_LEVELS, **dict(enumerate(path))}
        channels = {-2: config.stem_widths[1], -1: config.stem_widths[2]}  # of each layer
        # The level read as H(l-2) by each cell: the rule the supernet uses, which here has
        # one node to choose from, the path's.
        self.prev_prev_levels = [prev_prev_level(level, [self.path_levels[layer - 2]])
                                 for layer, level in enumerate(path)]
        self.cells = nn.ModuleList()
        for layer, level in enumerate(path):
            self.cells.append(RetrainCell(
                config.genotype.cell, channels[layer - 2], channels[layer - 1],
                level_channels(config.filter_multiplier, level),
                level - self.path_levels[layer - 1],
                config.block_multiplier))
            channels[layer] = config.cell_channels(level)
        at_stride_4 = [layer for layer, level in enumerate(path) if level == 0]
        self.low_level_layer = at_stride_4[-1] if at_stride_4 else -1  # -1: the stem's output
        low_level_channels, c_prev = channels[self.low_level_layer], channels[len(path) - 1]
        final_stride = level_stride(path[-1])
        self.aspp = ASPP(c_prev, config.aspp_channels, aspp_rates(final_stride))
        self.decoder = Decoder(low_level_channels, config.aspp_channels, config.num_classes,
                               config.low_level_proj, config.decoder_channels)

    def set_drop_path_prob(self, prob: float) -> None:
        """Drop probability of every non-identity cell op from now on (training only)."""
        for cell in self.cells:
            cell.drop_prob = float(prob)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (N, 3, H, W)
        half, x = self.stem(images)  # (N, 64, H/2, W/2), (N, 128, H/4, W/4)
        sizes = level_sizes(x.shape[-2:])  # (h, w) of every level; odd sizes round up
        # Outputs of the last two layers, keyed by (layer, level).
        outputs = {(-2, STEM_LEVELS[-2]): half, (-1, STEM_LEVELS[-1]): x}
        low_level = x
        for layer, cell in enumerate(self.cells):
            level = self.path_levels[layer]
            prev_prev = outputs.pop((layer - 2, self.prev_prev_levels[layer]))
            x = cell(prev_prev, outputs[(layer - 1, self.path_levels[layer - 1])], sizes[level])
            outputs[(layer, level)] = x
            if layer == self.low_level_layer:
                low_level = x  # (N, B * F, H/4, W/4)
        x = self.aspp(x)  # (N, 256, H/s, W/s) at the final stride s
        x = self.decoder(x, low_level)  # (N, K, H/4, W/4)
        return F.interpolate(x, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def model_args(self) -> dict:
        """Constructor arguments as plain data: `AutoDeepLab.from_model_args` rebuilds it."""
        return self.config.to_dict()

    @classmethod
    def from_model_args(cls, model_args: dict) -> "AutoDeepLab":
        """Rebuild from `model_args()` (e.g. a checkpoint's), weights not loaded."""
        return cls(RetrainConfig.from_dict(model_args))
