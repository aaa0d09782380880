"""Running under torchrun: joining the process group, sharding data, keeping replicas equal.

Everything here is a no-op (or returns the single-process answer) when the script runs as
one process, so the entry scripts call it unconditionally.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DistributedSampler, Subset

from utils.errors import UserError
from utils.interrupt import Interrupted, StopSignals, exit_after_stop

T = TypeVar("T")

# DistributedSampler seeds its generator with seed + epoch; torch seeds must fit in 64 bits.
_SAMPLER_SEED_RANGE = 2**63


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank 0 of 1 unless launched by torchrun / distributed.launch."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# Backends of a process group on CUDA, by device type.
CUDA_BACKENDS = "cpu:gloo,cuda:nccl"
# Names the backend instead, for tests: with gloo, several processes may share one GPU (NCCL
# refuses), which is how bench/gpu_check.py runs two processes on a one-GPU machine.
BACKEND_ENV = "AUTODEEPLAB_DIST_BACKEND"


def init_distributed(local_rank_flag: int | None,
                     device_name: str | None) -> tuple[DistInfo, torch.device | None]:
    """Join the process group when WORLD_SIZE > 1: gloo on the CPU; on CUDA a group that serves
    both devices, NCCL for CUDA tensors and gloo for CPU ones, so that a collective on a CPU
    tensor (a checksum, a Python object) works there too instead of failing with "No backend
    type associated with device type cpu"."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), None
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank_flag or 0))
    use_cuda = torch.cuda.is_available() and (device_name is None or device_name.startswith("cuda"))
    backend = os.environ.get(BACKEND_ENV)
    if use_cuda:
        index = local_rank
        if local_rank >= torch.cuda.device_count():
            if not backend:
                raise UserError(f"process with LOCAL_RANK {local_rank} but this machine shows "
                                f"{torch.cuda.device_count()} GPU(s): start at most one "
                                f"process per GPU (torchrun --nproc_per_node)")
            index = local_rank % torch.cuda.device_count()  # the GPU check: GPUs shared
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend or (CUDA_BACKENDS if use_cuda else "gloo"))
    return DistInfo(rank, world_size, local_rank), device


def run_then_leave(dist_info: DistInfo, script: str, body: Callable[[], T]) -> T:
    """`body()`, then leave the process group (nothing to leave in one process).

    A stop all processes agreed on (`Interrupted`) says how to continue `script` and exits
    with the signal's code. Only when every process got to the end together, by finishing or
    by that stop, is `leave_process_group`'s barrier safe: after an error on one process the
    others may never reach it.
    """
    together = False
    try:
        result = body()
        together = True
        return result
    except Interrupted as err:
        together = True
        exit_after_stop(err, script, dist_info.distributed)
    finally:
        leave_process_group(dist_info, together)


def leave_process_group(dist_info: DistInfo, together: bool) -> None:
    """Destroy the process group; `together`: every process got here at the same step (the
    run ended, or all agreed to stop), so a barrier is safe first.

    The barrier makes sure no gloo worker thread still holds a collective's tensors when the
    interpreter exits: the thread that ran a collective frees its work object after `wait()`
    returns, and freeing a tensor made in Python needs the GIL. If the main thread has begun
    interpreter finalisation by then, the worker dies taking the GIL and the process aborts
    ("terminate called without an active exception", exit -6, after a complete run; seen
    in about 1 of 40 two-process runs on CPU, and `destroy_process_group` does not join the
    workers). The barrier's own work holds no Python tensor, and while the main thread waits
    in it the GIL is free for the workers to finish.
    """
    if not dist_info.distributed:
        return
    if together:
        dist.barrier()
    dist.destroy_process_group()


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agreed_stop(requested: int | None, dist_info: DistInfo, device) -> int | None:
    """The stop request of any process (all stop at the same step), else None."""
    if not dist_info.distributed:
        return requested
    flag = torch.tensor([requested or 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def stop_if_requested(stop: StopSignals, dist_info: DistInfo, device, checkpoint) -> None:
    """Raise Interrupted (naming `checkpoint`, None on ranks that write none) when any
    process received a stop signal."""
    requested = agreed_stop(stop.requested, dist_info, device)
    if requested:
        raise Interrupted(requested, checkpoint)


def check_replicas_in_sync(model: nn.Module) -> float:
    """All-gather a float64 checksum of every parameter; raise if processes differ.

    DDP (retraining) and `average_gradients` (search) keep parameters identical by
    construction; this catches what would silently break it (a rank-dependent op, a parameter
    left out of the gradient all-reduce). BN running statistics are left out: the search's
    batch norm is not synchronised, so each process updates them from its own batches; rank
    0's are the ones saved, and given to all (`broadcast_buffers`). The retraining's batch
    norm is synchronised (`utils.sync_batchnorm`).
    """
    with torch.no_grad():
        local = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    if dist.is_available() and dist.is_initialized():
        gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        for rank, other in enumerate(gathered):
            if not torch.equal(other, local):
                raise RuntimeError(f"model replicas diverged: rank {rank} differs from rank "
                                   f"{dist.get_rank()}")
    return local.sum().item()


def average_gradients(params) -> None:
    """Replace the gradients of `params` by their mean over all processes (one all-reduce of
    a flat buffer), so that every process takes the same optimiser step: all-reduce hands
    every process the same sum, so the means are bit-identical. A no-op in one process."""
    if not _initialized():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BN running statistics, which each process
    otherwise updates from its own batches), as DDP does before a forward. A no-op in one
    process."""
    if not _initialized():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def shard_sampler(dataset, dist_info: DistInfo, seed: int) -> DistributedSampler | None:
    """This process's share of `dataset`, reshuffled each epoch (`set_epoch`) from `seed`.

    The shares of one epoch are disjoint and equally long (the order's last
    len % world_size items are dropped), so every process runs the same number of steps.
    None in one process: the loader shuffles the whole dataset itself.
    """
    if not dist_info.distributed:
        return None
    return DistributedSampler(dataset, dist_info.world_size, dist_info.rank, shuffle=True,
                              seed=seed % _SAMPLER_SEED_RANGE, drop_last=True)


def rank_share(dataset, dist_info: DistInfo) -> Subset:
    """Every world_size-th item, from this process's rank on: no padding, so counts summed
    over processes (validation) are exact. The whole dataset in one process."""
    return Subset(dataset, list(range(dist_info.rank, len(dataset), dist_info.world_size)))
