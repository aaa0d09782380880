"""Benchmark of one search step: time, memory and FLOPs of the supernet.

    .venv/bin/python bench/search_step.py                       # F=8 B=5 L=12, crops 64 128 192
    .venv/bin/python bench/search_step.py --crops 192 --checkpoint-cells
    .venv/bin/python bench/search_step.py --crops 192 --partial-channels 4
    .venv/bin/python bench/search_step.py --crops 64 --supernet plain   # the DARTS-shaped baseline
    python3 bench/search_step.py --device cuda --crops 321 --cuda-graphs  # steps as CUDA graphs

Each crop runs in a fresh process, so the peak resident memory (CPU) is that configuration's
own; on CUDA `torch.cuda.max_memory_allocated` is reported. In the same process the machine's
float32 matmul rate is measured, so the fraction of peak is a ratio taken side by side.
Prints one JSON object per crop.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.step_timing import (add_common_args, count_flops,  # noqa: E402
                               count_operator_calls, peak_memory_gib, precision,
                               run_per_crop, throughput, timed)
from engine.search import Architect, weight_step  # noqa: E402
from modeling import supernet  # noqa: E402
from modeling.supernet import AutoDeepLabSearch, SupernetConfig  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, crops=[64, 128, 192], batch_size=2)
    p.add_argument("--filter-multiplier", type=int, default=8, help="F")
    p.add_argument("--block-multiplier", type=int, default=5, help="B")
    p.add_argument("--steps", type=int, default=5, help="blocks per cell")
    p.add_argument("--num-layers", type=int, default=12, help="L")
    p.add_argument("--checkpoint-cells", action="store_true", help="recompute cell activations")
    p.add_argument("--partial-channels", type=int, default=1, metavar="K",
                   help="PC-DARTS partial channel connections (1: the paper's supernet)")
    # Revisions before the plain supernet (bench/revisions_ab.py) know only the fast one.
    p.add_argument("--supernet", default="fast",
                   choices=getattr(supernet, "IMPLEMENTATIONS", ("fast",)),
                   help="the fast cells, or the plain ones (one module per edge) as baseline")
    p.add_argument("--fast-paths", default="device", choices=["device", "cpu", "other"],
                   help="the search cell's fast paths (modeling.search_cell.FastPaths): the "
                        "device's own, the CPU's, or those of every other device (a GPU's "
                        "operator calls, counted on this machine)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="both steps as CUDA graphs, as train_autodeeplab.py --cuda-graphs "
                        "(captured in the untimed steps)")
    return p


def build(args, crop: int):
    """The supernet of `args` in training mode and its two steps on one random batch at
    `crop`: (model, criterion, images, targets, weight step, architecture step), the steps
    as train_autodeeplab.py makes them."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = SupernetConfig(num_classes=args.num_classes, num_layers=args.num_layers,
                            filter_multiplier=args.filter_multiplier,
                            block_multiplier=args.block_multiplier, steps=args.steps,
                            partial_channels=args.partial_channels,
                            **({} if args.supernet == "fast" else
                               {"implementation": args.supernet}))
    # Revisions before the flag know only the device's own paths (bench/revisions_ab.py).
    paths, fast_paths = getattr(args, "fast_paths", "device"), {}
    if paths != "device":
        from modeling.search_cell import CPU_FAST_PATHS, OTHER_FAST_PATHS
        fast_paths["fast_paths"] = CPU_FAST_PATHS if paths == "cpu" else OTHER_FAST_PATHS
    model = AutoDeepLabSearch(config, checkpoint_cells=args.checkpoint_cells,
                              **fast_paths).to(device).train()
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    weights = model.weight_parameters()
    optimizer = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4,
                                fused=True)  # as train_autodeeplab.py
    autocast, new_scaler = precision(args, device)
    architect = Architect(model, criterion, 3e-3, 1e-3, autocast, new_scaler())
    weight_scaler = new_scaler()
    images = torch.randn(args.batch_size, 3, crop, crop, device=device)
    targets = torch.randint(0, args.num_classes, (args.batch_size, crop, crop), device=device)
    if getattr(args, "cuda_graphs", False):  # revisions before it lack the flag
        # As SearchParts.capture_steps: one memory pool, the loss read after each step.
        from engine.cuda_graphs import graph_search_steps, prepare_optimizers
        from engine.search import weight_step_tensors
        prepare_optimizers(optimizer, architect.optimizer, device)
        graphed_weight, graphed_arch = graph_search_steps(lambda x, y: weight_step_tensors(
            model, criterion, optimizer, weights, x, y, grad_clip=5.0, autocast=autocast),
            architect)
        return (model, criterion, images, targets,
                lambda: graphed_weight(images, targets).item(),
                lambda: architect.record(*graphed_arch(images, targets)))
    return (model, criterion, images, targets,
            lambda: weight_step(model, criterion, optimizer, weights, images, targets,
                                grad_clip=5.0, autocast=autocast, scaler=weight_scaler),
            lambda: architect.step(images, targets))


def measure(args, crop: int) -> dict:
    device = torch.device(args.device)
    model, criterion, images, targets, step_weights, step_arch = build(args, crop)
    weights = model.weight_parameters()

    # Timed steps first, so the peak memory is theirs and not the FLOP counter's. CUDA graphs
    # are captured in the untimed steps.
    warmup = args.warmup
    if args.cuda_graphs:
        from engine.cuda_graphs import WARMUP_CALLS
        warmup = max(warmup, WARMUP_CALLS + 1)
    w_med, w_min = timed(step_weights, device, warmup, args.repeats)
    a_med, a_min = timed(step_arch, device, warmup, args.repeats)
    peak = peak_memory_gib(device)
    calls = {"weight_step": count_operator_calls(step_weights),
             "arch_step": count_operator_calls(step_arch)}
    forward_flops, total_flops = count_flops(lambda: criterion(model(images), targets))
    model.zero_grad(set_to_none=True)
    return {
        "crop": crop, "batch": args.batch_size, "F": args.filter_multiplier,
        "B": args.block_multiplier, "steps": args.steps, "L": args.num_layers,
        "checkpoint_cells": args.checkpoint_cells, "partial_channels": args.partial_channels,
        "supernet": args.supernet, "fast_paths": args.fast_paths,
        "cuda_graphs": args.cuda_graphs,
        "device": str(device), "amp": args.amp, "tf32": args.tf32,
        "threads": torch.get_num_threads(),
        "weight_step_s": {"median": round(w_med, 3), "min": round(w_min, 3)},
        "arch_step_s": {"median": round(a_med, 3), "min": round(a_min, 3)},
        "images_per_s": round(args.batch_size / w_med, 2),
        "peak_memory_gib": round(peak, 3),
        "operator_calls": calls,
        "forward_gflop": round(forward_flops / 1e9, 2),
        "forward_backward_gflop": round(total_flops / 1e9, 2),
        **throughput(total_flops, w_min, device),
        "weight_params_m": round(sum(p.numel() for p in weights) / 1e6, 2),
    }


if __name__ == "__main__":
    run_per_crop(get_args_parser().parse_args(), __file__, measure)
