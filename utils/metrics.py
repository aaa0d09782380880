"""Segmentation metrics from a confusion matrix kept as a torch tensor.

Keeping the counts in an int64 tensor on the evaluation device means a distributed run can sum
them across processes with one ``all_reduce`` before ``compute``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class ConfusionMatrix:
    """Accumulates ``mat[target, pred]`` pixel counts; rows are targets, columns predictions."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device=None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Zero all counts."""
        self.mat.zero_()

    @torch.no_grad()
    def update(self, target: Tensor, pred: Tensor) -> None:
        """Add integer tensors of one shape; pixels whose target is ignore_index are skipped."""
        if target.shape != pred.shape:
            raise ValueError(
                f"target shape {tuple(target.shape)} != pred shape {tuple(pred.shape)}"
            )
        n = self.num_classes
        target = target.reshape(-1).to(self.mat.device, torch.int64)
        pred = pred.reshape(-1).to(self.mat.device, torch.int64)
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        # Out-of-range ids would silently land in another cell of the flattened bincount.
        if target.numel() and (
            target.min() < 0 or target.max() >= n or pred.min() < 0 or pred.max() >= n
        ):
            raise ValueError(
                f"class ids must lie in 0..{n - 1} (or be ignore_index {self.ignore_index})"
            )
        self.mat += torch.bincount(target * n + pred, minlength=n * n).view(n, n)

    def all_reduce(self) -> None:
        """Sum the counts over all processes of the default group (no-op when not distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.mat)

    def compute(self) -> dict:
        """Metrics of the counts so far.

        Returns ``miou``, ``per_class_iou`` (list; nan for a class absent from both target and
        prediction, which is left out of ``miou``), ``pixel_acc``, ``mean_acc`` (over classes
        present in the target) and ``fwiou`` (IoU weighted by target frequency).
        All are nan when nothing has been counted.
        """
        mat = self.mat.double().cpu()
        tp = mat.diag()
        target_count = mat.sum(1)
        pred_count = mat.sum(0)
        total = mat.sum()
        union = target_count + pred_count - tp
        present = union > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        in_target = target_count > 0
        class_acc = tp[in_target] / target_count[in_target]
        freq = target_count / total.clamp(min=1)
        nan = math.nan
        return {
            "miou": iou[present].mean().item() if present.any() else nan,
            "per_class_iou": iou.tolist(),
            "pixel_acc": (tp.sum() / total).item() if total > 0 else nan,
            "mean_acc": class_acc.mean().item() if in_target.any() else nan,
            # Classes absent from the target have frequency 0, so their IoU adds nothing.
            "fwiou": (freq[present] * iou[present]).sum().item() if total > 0 else nan,
        }
