"""Batch norm whose statistics are pooled over all processes, on any device.

torch's `nn.SyncBatchNorm` serves CUDA (and XPU, HPU) tensors only; on the CPU it raises.
`SyncBatchNorm` here pools the per-channel sums over the process group with one differentiable
all-reduce per layer, so that training under torchrun normalises over the global batch on
the CPU too. That is what makes one image per process trainable: the ASPP image pooling's
batch norm sees one value per image and channel, and needs two or more in the pooled batch.
`convert_sync_batchnorm` picks torch's fused kernels on CUDA and this layer elsewhere.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn as nn


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the union of all processes' batches (training); plain batch norm in
    eval mode or in one process. Same parameters and buffers as `nn.BatchNorm2d`."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and _world_size() > 1):
            return super().forward(input)
        if self.momentum is None:
            raise ValueError("SyncBatchNorm needs a momentum (cumulative averages unsupported)")
        dims = [0, *range(2, input.dim())]
        x = input.float()
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        # One all-reduce of [sum, sum of squares, count]; its backward all-reduces the
        # gradients, so every process's input gets the gradient of the global statistics.
        local = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        total = dist_fn.all_reduce(local, op=dist.ReduceOp.SUM)
        channels = x.shape[1]
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every batch norm layer synchronised across processes: torch's
    `nn.SyncBatchNorm` on CUDA, `SyncBatchNorm` above on other devices."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, SyncBatchNorm):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        sync.load_state_dict(module.state_dict())
        sync.train(module.training)
        tensors = list(module.state_dict().values())
        return sync.to(tensors[0].device) if tensors else sync
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module
