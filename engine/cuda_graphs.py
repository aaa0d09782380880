"""The search's two steps as CUDA graphs (`train_autodeeplab.py --cuda-graphs`, experimental).

A weight step of the F = 8 supernet issues some 80,000 operator calls (docs/gpus.md), each
costing the host a few microseconds whatever its size, so on a GPU a step takes close to a
second at any crop. A CUDA graph records the kernels of one step once and launches them all
again with one call (https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs), which
removes the host's share.

What a captured step needs, and where this project gives it:
- static shapes: the search's loaders drop their last incomplete batch and crop every image
  alike, so every batch of a run has one shape (`GraphedStep` raises on another);
- no host synchronisation inside the step: `weight_step_tensors` and
  `Architect.step_tensors` (engine/search.py) return tensors and read nothing back; the loss
  is read, and the architecture statistics taken, after the replay;
- optimisers whose state and hyper-parameters live on the GPU: the weights' learning rate is
  a tensor that the schedule fills in place, and Adam runs with `capturable` (`prepare_optimizers`);
- one process, no fp16 loss scaling (its overflow check reads the GPU), no recomputed cells,
  no Beta-Decay (its weight changes every epoch, a captured step would keep the first), no
  anomaly detection: `check_cuda_graphs` refuses these with one line each.
"""
from __future__ import annotations

import logging

import torch

from utils.amp import resolve_amp_dtype
from utils.errors import UserError

log = logging.getLogger(__name__)

# Eager calls before the capture, on a side stream (PyTorch's recipe): they are real steps of
# the run, and they let cuDNN choose its algorithms and the optimisers create their state.
WARMUP_CALLS = 3


def check_cuda_graphs(args, device: torch.device, distributed: bool) -> None:
    """One-line errors for what `--cuda-graphs` cannot capture; nothing when it is off."""
    if not args.cuda_graphs:
        return
    if device.type != "cuda":
        raise UserError(f"--cuda-graphs needs a CUDA device but this run is on {device}: "
                        "drop --cuda-graphs (or pass --device cuda)")
    refused = {
        "a run under torchrun": distributed,
        "--amp with fp16 (its loss scaling reads the GPU every step): use --amp-dtype bf16":
            args.amp and resolve_amp_dtype(args.amp_dtype, device) == "fp16",
        "--checkpoint-cells": args.checkpoint_cells,
        "--beta-decay (its weight changes every epoch)": args.beta_decay > 0,
        "--detect-anomaly": args.detect_anomaly,
    }
    for what, present in refused.items():
        if present:
            raise UserError(f"--cuda-graphs cannot capture {what}; drop one of the two")


def prepare_optimizers(weight_optimizer: torch.optim.Optimizer,
                       arch_optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make both optimisers capturable, after any checkpoint was loaded into them: the
    weights' learning rate becomes a tensor on `device` (LambdaLR fills it in place, a
    captured step reads it there) and Adam keeps its step counts on `device`."""
    for group in weight_optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
    for group in arch_optimizer.param_groups:
        group["capturable"] = True
    for state in arch_optimizer.state.values():
        if "step" in state:
            state["step"] = state["step"].to(device=device, dtype=torch.float32)


def portable_optimizer_state(state: dict) -> dict:
    """An optimiser's `state_dict()` as an eager run saves it: a float learning rate, not
    capturable, step counts on the CPU, so that a checkpoint of a --cuda-graphs run resumes
    anywhere, the CPU included (capturable Adam runs on GPUs only)."""
    groups = [{**group, "lr": float(group["lr"]),
               **({"capturable": False} if "capturable" in group else {})}
              for group in state["param_groups"]]
    per_param = {key: {name: value.cpu() if name == "step" and torch.is_tensor(value) else value
                       for name, value in entry.items()}
                 for key, entry in state["state"].items()}
    return {**state, "param_groups": groups, "state": per_param}


class GraphedStep:
    """`fn(*inputs)`, a step returning tensors, replayed from a CUDA graph.

    The first `warmup` calls run eagerly on a side stream; the next one captures `fn` on
    static copies of its inputs and replays it; every later call copies its inputs into
    them and replays. The returned tensors are the graph's own: read them before the next
    call. Inputs of another shape than the captured ones raise. Graphs that share
    `pool` (`torch.cuda.graph_pool_handle()`) must be replayed in the order they were
    captured, as the search's weight and architecture steps are.
    """

    def __init__(self, fn, name: str, warmup: int = WARMUP_CALLS, pool=None):
        self.fn, self.name, self.warmup, self.pool = fn, name, warmup, pool
        self.calls = 0
        self.graph = self.static_inputs = self.outputs = None

    def __call__(self, *inputs: torch.Tensor):
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.fn(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self._capture(inputs)
        elif any(s.shape != x.shape for s, x in zip(self.static_inputs, inputs)):
            # An eager step here would free the graph's gradients into the shared pool.
            raise RuntimeError(
                f"{self.name} step: inputs of shape {[tuple(x.shape) for x in inputs]}, but its "
                f"CUDA graph was captured for {[tuple(s.shape) for s in self.static_inputs]}; "
                "--cuda-graphs needs batches of one shape")
        else:
            for static, x in zip(self.static_inputs, inputs):
                static.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.outputs

    def _capture(self, inputs) -> None:
        self.static_inputs = [x.clone() for x in inputs]
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the loaders' pin-memory threads may allocate while this one captures.
        with torch.cuda.graph(self.graph, pool=self.pool, capture_error_mode="thread_local"):
            self.outputs = self.fn(*self.static_inputs)
        log.info("%s step captured as a CUDA graph", self.name)


def graph_search_steps(weight_step_fn, architect) -> tuple["GraphedStep", "GraphedStep"]:
    """The search's weight step `weight_step_fn(images, targets)` (`weight_step_tensors`)
    and `architect`'s step as GraphedSteps sharing one memory pool: each runs after the
    other, in the order of their capture. The epoch only sets the Beta-Decay weight, which
    --cuda-graphs refuses."""
    pool = torch.cuda.graph_pool_handle()
    return (GraphedStep(weight_step_fn, "weight", pool=pool),
            GraphedStep(architect.step_tensors, "architecture", pool=pool))
