"""The retrained Auto-DeepLab network built from a Genotype (SPEC section 5).

    stem (3x3 convs of 64, 64, 128; stride 2 in the first and third) -> stride 4
    12 cells along genotype.network_path                               -> stride 4 * 2^level
    ASPP (256 filters) at the path's final stride
    DeepLabv3+ decoder with stride-4 low-level features                -> logits at input size

Choices the paper leaves open, and why (they reproduce the paper's Table 2 parameter counts
to within 0.3 %, see `tests/test_retrain_model.py`):

- Cell inputs. H(l-1) is brought to this layer's level by FactorizedReduce (one level down),
  bilinear resize to the exact target size + ReLU-conv1x1-BN (one level up) or ReLU-conv1x1-BN
  (same level). H(l-2) is resized bilinearly to this layer's size when it differs, then
  projected by ReLU-conv1x1-BN to C. This is what the released reference model does.
- Layer 0 reads H(l-1) = the stem's output (128 channels, stride 4) and H(l-2) = the output
  of the stem's second conv (64 channels, stride 2), resized; layer 1 reads the stem's output
  as H(l-2). The stem thus plays the two "previous cells" of the first layers, as in the
  reference model, whose first cells take the stem's last two feature maps.
- Cell output: concatenation of the last `block_multiplier` blocks, C = F * 2^level each.
- Atrous convolutions are dense (SPEC section 2); ASPP and decoder convs are dense too.
- ASPP rates are DeepLabv3's (6, 12, 18) at output stride 16, scaled by 16 / final stride,
  so that they cover the same image extent whatever level the path ends at.
- Low-level features for the decoder: the output of the last cell on the path that sits at
  level 0 (stride 4). A path that never sits at level 0 uses the stem's output (stride 4,
  128 channels) instead. Their channel count follows from the path, never hard-coded.
- Retrain BN layers are affine. Optional drop path (NASNet / DARTS) on every non-identity op,
  with a drop probability the training loop schedules (`set_drop_path_prob`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.aspp import ASPP
from modeling.decoder import Decoder
from modeling.genotypes import BASE_STRIDE, Genotype
from modeling.operations import OPS, FactorizedReduce, ReLUConvBN, Upsample, stem
from modeling.search_space import NUM_LEVELS

# DeepLabv3's ASPP rates at output stride 16; other strides scale them by 16 / stride.
ASPP_REFERENCE_STRIDE = 16
ASPP_REFERENCE_RATES = (6, 12, 18)
# Filter multipliers of the paper's Auto-DeepLab-S / M / L (SPEC section 5).
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
    stem_widths: tuple[int, int, int] = (64, 64, 128)
    aspp_channels: int = 256
    low_level_proj: int = 48
    decoder_channels: int = 256

    def __post_init__(self):
        object.__setattr__(self, "stem_widths", tuple(self.stem_widths))
        if not 1 <= self.block_multiplier <= self.genotype.steps:
            raise ValueError(f"block_multiplier must be 1..{self.genotype.steps} (the cell's "
                             f"blocks), got {self.block_multiplier}")

    def cell_channels(self, level: int) -> int:
        """Output channels of a cell at `level`: block_multiplier * F * 2^level."""
        return self.block_multiplier * self.filter_multiplier * 2 ** level

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
    """One cell of the path: preprocess both inputs to this level, then the genotype's blocks.

    `direction` is this cell's level minus the previous cell's: +1 (down in resolution),
    0, or -1 (up). Operations are built in `genotype.cell` order, block by block, and applied
    in that same order (`self.ops[i]` reads `self.inputs[i]`).
    """

    def __init__(self, cell, c_prev_prev: int, c_prev: int, channels: int, direction: int,
                 block_multiplier: int):
        super().__init__()
        if direction == 1:
            self.preprocess_prev = FactorizedReduce(c_prev, channels)
        elif direction == 0:
            self.preprocess_prev = ReLUConvBN(c_prev, channels, 1)
        elif direction == -1:
            self.preprocess_prev = Upsample(c_prev, channels)
        else:
            raise ValueError(f"a cell moves at most one level, got direction {direction}")
        self.direction = direction
        self.preprocess_prev_prev = ReLUConvBN(c_prev_prev, channels, 1)
        self.block_multiplier = block_multiplier
        self.ops = nn.ModuleList()
        self.inputs: list[int] = []
        for pairs in cell:
            for inp, op in pairs:
                self.ops.append(OPS[op](channels, True))
                self.inputs.append(inp)
        self.drop_prob = 0.0

    def forward(self, prev_prev: torch.Tensor, prev: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        # prev: (N, c_prev, h', w') one level away at most; size: this level's (h, w)
        if self.direction == -1:
            s1 = self.preprocess_prev(prev, size)
        else:
            s1 = self.preprocess_prev(prev)
        if tuple(prev_prev.shape[-2:]) != tuple(size):
            prev_prev = F.interpolate(prev_prev, size=size, mode="bilinear",
                                      align_corners=False)
        states = [self.preprocess_prev_prev(prev_prev), s1]  # input 0 = H(l-2), 1 = H(l-1)
        for first in range(0, len(self.ops), 2):
            block = 0
            for op, inp in zip(self.ops[first:first + 2], self.inputs[first:first + 2]):
                h = op(states[inp])
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
        self.stem = stem(3, config.stem_widths)
        # The stem's second conv (stride 2) and its output (stride 4, level 0) are the two
        # "previous cells" of layer 0; see the module docstring.
        c_prev_prev, c_prev, prev_level = config.stem_widths[1], config.stem_widths[2], 0
        self.cells = nn.ModuleList()
        low_level_layer, low_level_channels = -1, config.stem_widths[2]
        for layer, level in enumerate(path):
            channels = config.filter_multiplier * 2 ** level
            self.cells.append(RetrainCell(config.genotype.cell, c_prev_prev, c_prev, channels,
                                          level - prev_level, config.block_multiplier))
            c_prev_prev, c_prev, prev_level = c_prev, config.cell_channels(level), level
            if level == 0:
                low_level_layer, low_level_channels = layer, c_prev
        self.low_level_layer = low_level_layer  # -1: the stem's output
        final_stride = BASE_STRIDE * 2 ** path[-1]
        self.aspp = ASPP(c_prev, config.aspp_channels, aspp_rates(final_stride))
        self.decoder = Decoder(low_level_channels, config.aspp_channels, config.num_classes,
                               config.low_level_proj, config.decoder_channels)

    def set_drop_path_prob(self, prob: float) -> None:
        """Drop probability of every non-identity cell op from now on (training only)."""
        for cell in self.cells:
            cell.drop_prob = float(prob)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (N, 3, H, W)
        half = self.stem[1](self.stem[0](images))  # (N, 64, H/2, W/2)
        x = self.stem[2](half)  # (N, 128, H/4, W/4)
        sizes = [tuple(x.shape[-2:])]  # (h, w) of every level; odd sizes round up
        for _ in range(NUM_LEVELS - 1):
            h, w = sizes[-1]
            sizes.append(((h + 1) // 2, (w + 1) // 2))
        prev_prev, prev, low_level = half, x, x
        for layer, (cell, level) in enumerate(zip(self.cells,
                                                  self.config.genotype.network_path)):
            prev_prev, prev = prev, cell(prev_prev, prev, sizes[level])
            if layer == self.low_level_layer:
                low_level = prev  # (N, B * F, H/4, W/4)
        x = self.aspp(prev)  # (N, 256, H/s, W/s) at the final stride s
        x = self.decoder(x, low_level)  # (N, K, H/4, W/4)
        return F.interpolate(x, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def model_args(self) -> dict:
        """Constructor arguments as plain data: `AutoDeepLab.from_model_args` rebuilds it."""
        return self.config.to_dict()

    @classmethod
    def from_model_args(cls, model_args: dict) -> "AutoDeepLab":
        """Rebuild from `model_args()` (e.g. a checkpoint's), weights not loaded."""
        return cls(RetrainConfig.from_dict(model_args))
