"""Learning-rate schedules as closed forms of the step, so resuming (even with a longer
budget) never depends on a recursion's history."""
from __future__ import annotations

import math

import torch


def cosine_factor(step: int, total_steps: int, base_lr: float, min_lr: float) -> float:
    """Cosine annealing from base_lr to min_lr over total_steps, as a factor of base_lr."""
    if base_lr == 0:  # frozen weights: any factor gives 0
        return 1.0
    t = min(step, total_steps) / max(total_steps, 1)
    return (min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))) / base_lr


def poly_factor(step: int, total_steps: int, power: float = 0.9, warmup_steps: int = 0) -> float:
    """Linear warm-up over warmup_steps, then (1 - t)^power (DeepLab's poly schedule)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min(step, total_steps) / max(total_steps, 1)
    return (1.0 - t) ** power


def cosine_schedule(optimizer, total_steps: int,
                    min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepping once per iteration; `min_lr` is absolute."""
    base = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, total_steps, base, min_lr))


def poly_schedule(optimizer, total_steps: int, power: float = 0.9,
                  warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepping once per iteration: warm-up, then poly decay to 0."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: poly_factor(step, total_steps, power, warmup_steps))
