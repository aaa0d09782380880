"""A run whose loss or weights stop being finite: the exception both training loops raise,
the check before every checkpoint, and the one line the user gets."""
from __future__ import annotations

import torch
import torch.nn as nn

from utils.errors import UserError


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration."""


def diverged_error(err: NonFiniteLoss, checkpoint_path, remedy: str) -> UserError:
    """The one line a diverged run stops with: what went non-finite, the last good checkpoint
    (never overwritten by the diverged state) and `remedy` (which learning rates to lower)."""
    kept = checkpoint_path if checkpoint_path and checkpoint_path.exists() else "none yet"
    return UserError(f"{err}; stopped, the last good checkpoint is {kept} (lower {remedy}, or "
                     "check the data; --detect-anomaly names the operation)")


def check_finite(model: nn.Module, step: int) -> None:
    """Raise NonFiniteLoss if a parameter or buffer of `model` is NaN or infinite, so that a
    diverged state is never saved over the last good checkpoint."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise NonFiniteLoss(f"{name} became non-finite by iteration {step}")
