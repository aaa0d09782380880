"""What the architecture step tells the alphas and betas, and how far they move.

A differentiable search learns an architecture only if the architecture gradient points the
same way from one B batch to the next: Adam divides each update by the gradient's running
root mean square, so a gradient that is mostly noise gives steps that cancel, however many
steps are taken. `ArchStats` measures this per architecture parameter:

- per step: the gradient's norm and the mean absolute size of Adam's update;
- per epoch (since `reset`): their means, and the gradient's signal-to-noise ratio, for every
  element |mean| / standard deviation over the epoch's steps, summarised by the median over
  the elements (elements whose gradient is always zero, betas of transitions that do not
  exist, are left out). Near 0: noise; 1 and more: a consistent direction.
"""
from __future__ import annotations

import math

import torch


class ArchStats:
    """Running statistics of the architecture gradients and updates; `names` in the order of
    `model.arch_parameters()`. Saved in checkpoints (`state_dict`), so that a resumed epoch
    reports what an uninterrupted one would."""

    def __init__(self, names):
        self.names = tuple(names)
        self.reset()

    def reset(self) -> None:
        """Start a new summary window (an epoch)."""
        self.steps = 0
        self.grad_sum: dict[str, torch.Tensor] = {}
        self.grad_sq_sum: dict[str, torch.Tensor] = {}
        self.grad_norm_sum = {name: 0.0 for name in self.names}
        self.update_sum = {name: 0.0 for name in self.names}
        self.last: dict[str, float] = {}

    @torch.no_grad()
    def record(self, grads, updates) -> dict[str, float]:
        """One step's gradients and Adam updates (tensors in `names` order); returns and keeps
        in `last` the step's scalars, `<name>_grad_norm` and `<name>_update`."""
        self.steps += 1
        last = {}
        for name, grad, update in zip(self.names, grads, updates):
            g = grad.detach().double().cpu()
            self.grad_sum[name] = self.grad_sum.get(name, 0) + g
            self.grad_sq_sum[name] = self.grad_sq_sum.get(name, 0) + g * g
            last[f"{name}_grad_norm"] = float(g.norm())
            last[f"{name}_update"] = float(update.detach().abs().mean())
            self.grad_norm_sum[name] += last[f"{name}_grad_norm"]
            self.update_sum[name] += last[f"{name}_update"]
        self.last = last
        return last

    def summary(self) -> dict[str, float]:
        """Means over the window's steps of the gradient norms and update sizes, and the
        median signal-to-noise ratio of each parameter's gradient (nan before two steps)."""
        out = {}
        for name in self.names:
            n = self.steps
            out[f"{name}_grad_norm"] = self.grad_norm_sum[name] / n if n else math.nan
            out[f"{name}_update"] = self.update_sum[name] / n if n else math.nan
            out[f"{name}_grad_snr"] = self._snr(name)
        return out

    def _snr(self, name: str) -> float:
        n = self.steps
        if n < 2:
            return math.nan
        mean = self.grad_sum[name] / n
        var = (self.grad_sq_sum[name] - n * mean * mean).clamp_min(0) / (n - 1)
        live = self.grad_sq_sum[name] > 0
        if not live.any():
            return math.nan
        std = var[live].sqrt()
        snr = mean[live].abs() / std.clamp_min(1e-30)
        return float(torch.quantile(snr, 0.5))  # the mean of the two middle ones if even

    def state_dict(self) -> dict:
        return {"steps": self.steps, "grad_sum": dict(self.grad_sum),
                "grad_sq_sum": dict(self.grad_sq_sum), "grad_norm_sum": dict(self.grad_norm_sum),
                "update_sum": dict(self.update_sum)}

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        self.steps = state["steps"]
        self.grad_sum, self.grad_sq_sum = dict(state["grad_sum"]), dict(state["grad_sq_sum"])
        self.grad_norm_sum.update(state["grad_norm_sum"])
        self.update_sum.update(state["update_sum"])
