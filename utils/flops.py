"""Model size: parameters and Multi-Adds, counted the way the paper's Table 2 reports them.

Counting rule: parameters are all trainable tensors (BN affine weights and biases included,
BN running statistics excluded). Multi-Adds are the FLOPs that
`torch.utils.flop_counter.FlopCounterMode` reports for one forward pass in eval mode, halved
(it counts a multiply-add as two FLOPs). It counts convolutions and matrix products only;
BN, ReLU, pooling and resizing add nothing. The model runs on the meta device, so any input
size costs no memory and no time.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def multi_adds(model: nn.Module, input_size: tuple[int, int], in_channels: int = 3) -> int:
    """Multiply-adds of one forward pass of a 1 x in_channels x H x W image (meta device)."""
    meta = copy.deepcopy(model).to("meta").eval()
    images = torch.empty(1, in_channels, *input_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(images)
    return counter.get_total_flops() // 2
