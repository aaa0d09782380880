"""Benchmark of one search step: time, memory and FLOPs of the supernet.

    .venv/bin/python bench/search_step.py                       # F=8 B=5 L=12, crops 64 128 192
    .venv/bin/python bench/search_step.py --crops 64 --checkpoint-cells

Each crop runs in a fresh process, so the peak resident memory (CPU) is that configuration's
own; on CUDA `torch.cuda.max_memory_allocated` is reported. In the same process the machine's
float32 matmul rate is measured, so the fraction of peak is a ratio taken side by side.
Prints one JSON object per crop.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.search import Architect, weight_step  # noqa: E402
from modeling.supernet import AutoDeepLabSearch, SupernetConfig  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--crops", type=int, nargs="+", default=[64, 128, 192], help="crop sizes")
    p.add_argument("--batch-size", type=int, default=2, help="images per step")
    p.add_argument("--filter-multiplier", type=int, default=8, help="F")
    p.add_argument("--block-multiplier", type=int, default=5, help="B")
    p.add_argument("--steps", type=int, default=5, help="blocks per cell")
    p.add_argument("--num-layers", type=int, default=12, help="L")
    p.add_argument("--num-classes", type=int, default=19, help="classes (Cityscapes: 19)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=5, help="timed steps (median and min)")
    p.add_argument("--checkpoint-cells", action="store_true", help="recompute cell activations")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process
    return p


def matmul_gflops(device, n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times) / 1e9


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                       transposed, _output_padding, _groups, output_mask, out_shape=None) -> int:
    """Backward of a convolution: one forward's FLOPs for each gradient asked for.

    torch's own formula multiplies grouped convolutions by the group count (a depthwise conv's
    backward comes out ~40x its forward), which would make every grouped-conv model look slow
    per FLOP; this counts what the kernels compute."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def measure(args, crop: int) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = SupernetConfig(num_classes=args.num_classes, num_layers=args.num_layers,
                            filter_multiplier=args.filter_multiplier,
                            block_multiplier=args.block_multiplier, steps=args.steps)
    model = AutoDeepLabSearch(config, checkpoint_cells=args.checkpoint_cells).to(device).train()
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    weights = model.weight_parameters()
    optimizer = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, criterion, 3e-3, 1e-3)
    images = torch.randn(args.batch_size, 3, crop, crop, device=device)
    targets = torch.randint(0, args.num_classes, (args.batch_size, crop, crop), device=device)

    # Timed steps first, so the peak memory is theirs and not the FLOP counter's.
    w_med, w_min = timed(lambda: weight_step(model, criterion, optimizer, weights, images,
                                             targets, grad_clip=5.0),
                         device, args.warmup, args.repeats)
    a_med, a_min = timed(lambda: architect.step(images, targets), device, args.warmup,
                         args.repeats)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB

    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.convolution_backward: conv_backward_flop})
    with counter:
        loss = criterion(model(images), targets)
        forward_flops = counter.get_total_flops()
        loss.backward()
    total_flops = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    mm = matmul_gflops(device)
    achieved = total_flops / w_min / 1e9
    return {
        "crop": crop, "batch": args.batch_size, "F": args.filter_multiplier,
        "B": args.block_multiplier, "steps": args.steps, "L": args.num_layers,
        "checkpoint_cells": args.checkpoint_cells, "device": str(device),
        "threads": torch.get_num_threads(),
        "weight_step_s": {"median": round(w_med, 3), "min": round(w_min, 3)},
        "arch_step_s": {"median": round(a_med, 3), "min": round(a_min, 3)},
        "images_per_s": round(args.batch_size / w_med, 2),
        "peak_memory_gib": round(peak, 3),
        "forward_gflop": round(forward_flops / 1e9, 2),
        "forward_backward_gflop": round(total_flops / 1e9, 2),
        "achieved_gflops": round(achieved, 1), "matmul_gflops": round(mm, 1),
        "fraction_of_matmul": round(achieved / mm, 4),
        "weight_params_m": round(sum(p.numel() for p in weights) / 1e6, 2),
    }


def main(args):
    if args.one is not None:
        print(json.dumps(measure(args, args.one)), flush=True)
        return
    for crop in args.crops:
        argv = [sys.executable, __file__, "--one", str(crop)]
        for key, value in vars(args).items():
            if key in ("crops", "one") or value is False:
                continue
            argv.append("--" + key.replace("_", "-"))
            if value is not True:
                argv.append(str(value))
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"crop {crop} failed:\n{out.stderr}")
        print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
