"""Our Multi-Adds of Auto-DeepLab-S / M / L beside the paper's Table 2, and what a TensorFlow
profiler count of the released model would add to them.

    .venv/bin/python bench/table2_multiadds.py

`train.py --summary` counts what the network computes at 1024 x 2048: every convolution's
multiply-adds (utils/flops.py). Table 2's figures are larger. They appear to be TensorFlow
profiler counts of the released model (tensorflow/models, research/deeplab), halved, which
differ from ours in four ways that this script counts on our own network, each on its own:

1. TF's evaluation size, 1025 x 2049 (odd, so that every level's size is exact).
2. Dilated convolutions run as space-to-batch: the input is padded so that each side is a
   multiple of the rate, and the profiler counts the convolution over that padded output,
   ceil(n / rate) * rate per side instead of n. This weighs most on the ASPP's large rates.
3. Image pooling at a 769 crop: DeepLab's image-level branch pools with a window the size of
   the training crop's feature map (769 -> 97 at stride 8), so at 1025 x 2049 it pools to a
   33 x 161 map, not 1 x 1. The profiler counts the pooling window (kernel area per output)
   and the 1x1 convolution over that map.
4. Element-wise additions (the two operations of each block): one FLOP per element.

Halving the profiler's FLOPs gives Multi-Adds for (1); (2)-(4) are added as FLOPs / 2 too.
Prints one JSON object per model and a table.
"""
from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.genotypes import GENOTYPES  # noqa: E402
from modeling.retrain_net import (PAPER_FILTER_MULTIPLIERS, AutoDeepLab,  # noqa: E402
                                  RetrainConfig, RetrainCell)
from modeling.search_space import level_stride  # noqa: E402
from utils.flops import count_parameters, multi_adds  # noqa: E402

# Paper Table 2 (Cityscapes, 19 classes): parameters (M) and Multi-Adds (G).
TABLE_2 = {"autodeeplab-s": (10.15, 333.25), "autodeeplab-m": (21.62, 460.93),
           "autodeeplab-l": (44.42, 695.03)}
OUR_SIZE = (1024, 2048)
TF_SIZE = (1025, 2049)
POOLING_CROP = 769  # the training crop whose feature map sets the image-pooling window


def scale_dimension(n: int, scale: float) -> int:
    """The released model's size rule (research/deeplab/core/utils.py)."""
    return int((n - 1) * scale + 1)


def profiler_extras(model: AutoDeepLab, size: tuple[int, int]) -> dict:
    """Multi-Adds that a TF profiler count adds to ours at `size` (items 2-4 above)."""
    meta = copy.deepcopy(model).to("meta").eval()
    extra = {"space_to_batch": 0, "image_pooling": 0, "block_additions": 0}

    def dilated(conv, inputs, output):
        rate = conv.dilation[0]
        h, w = output.shape[-2:]
        padded = math.ceil(h / rate) * rate * math.ceil(w / rate) * rate
        per_pixel = conv.in_channels // conv.groups * conv.out_channels * math.prod(
            conv.kernel_size)
        extra["space_to_batch"] += (padded - h * w) * per_pixel

    def cell_adds(cell, inputs, output):
        # One addition per block, each over C x h x w (the output concatenates
        # block_multiplier blocks of C channels); the profiler's FLOPs halved.
        blocks = len(cell.ops) // 2
        extra["block_additions"] += output.numel() // cell.block_multiplier * blocks // 2

    for module in meta.modules():
        if isinstance(module, nn.Conv2d) and module.dilation[0] > 1:
            module.register_forward_hook(dilated)
        if isinstance(module, RetrainCell):
            module.register_forward_hook(cell_adds)
    features = {}
    meta.aspp.register_forward_hook(lambda m, inputs, out: features.update(x=inputs[0]))
    with torch.no_grad():
        meta(torch.empty(1, 3, *size, device="meta"))
    channels, h, w = features["x"].shape[1:]
    stride = level_stride(model.config.genotype.network_path[-1])
    window = scale_dimension(POOLING_CROP, 1 / stride)
    pooled = (h - window + 1) * (w - window + 1)
    image_conv = model.aspp.image_pool.op[0]
    # The pooling's window sums (kernel area per output, halved) and the 1x1 conv over the
    # pooled map instead of one pixel (which our count already has).
    extra["image_pooling"] = (window * window * pooled * channels // 2
                              + (pooled - 1) * image_conv.in_channels * image_conv.out_channels)
    return extra


def main() -> None:
    rows = []
    for arch, filters in PAPER_FILTER_MULTIPLIERS.items():
        with torch.device("meta"):
            model = AutoDeepLab(RetrainConfig(num_classes=19, genotype=GENOTYPES["autodeeplab"],
                                              filter_multiplier=filters))
        ours = multi_adds(model, OUR_SIZE)
        at_tf_size = multi_adds(model, TF_SIZE)
        extras = profiler_extras(model, TF_SIZE)
        row = {"arch": arch, "params_m": round(count_parameters(model) / 1e6, 3),
               "paper_params_m": TABLE_2[arch][0],
               "ours_1024x2048_g": round(ours / 1e9, 2),
               "ours_1025x2049_g": round(at_tf_size / 1e9, 2),
               **{f"{key}_g": round(value / 1e9, 2) for key, value in extras.items()},
               "profiler_estimate_g": round((at_tf_size + sum(extras.values())) / 1e9, 2),
               "paper_g": TABLE_2[arch][1]}
        row["estimate_over_paper"] = round(row["profiler_estimate_g"] / row["paper_g"], 4)
        rows.append(row)
        print(json.dumps(row))
    print()
    print("| model | params (M), ours / paper | ours at 1024x2048 | at 1025x2049 | "
          "+ space-to-batch | + image pooling at 769 | + block additions | estimate | "
          "paper | estimate / paper |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['params_m']:.2f} / {r['paper_params_m']} | "
              f"{r['ours_1024x2048_g']} | {r['ours_1025x2049_g']} | "
              f"{r['space_to_batch_g']} | {r['image_pooling_g']} | {r['block_additions_g']} | "
              f"{r['profiler_estimate_g']} | {r['paper_g']} | {r['estimate_over_paper']} |")


if __name__ == "__main__":
    main()
