"""Benchmark of one retraining step of the paper's Auto-DeepLab-S / M / L (or a genotype).

    .venv/bin/python bench/retrain_step.py                      # Auto-DeepLab-S, crop 321
    .venv/bin/python bench/retrain_step.py --model autodeeplab-m --crops 321 513

A step is what `train.py` does per batch: forward, cross-entropy, backward, SGD with
momentum. Each crop runs in a fresh process (peak resident memory of that configuration on
CPU, `torch.cuda.max_memory_allocated` on CUDA), next to the machine's float32 matmul rate
measured in the same process. Prints one JSON object per crop.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.step_timing import (add_common_args, count_flops, peak_memory_gib,  # noqa: E402
                               precision, run_per_crop, throughput, timed)
from modeling.genotypes import GENOTYPES  # noqa: E402
from modeling.retrain_net import (PAPER_FILTER_MULTIPLIERS, AutoDeepLab,  # noqa: E402
                                  RetrainConfig)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, crops=[321], batch_size=2)
    p.add_argument("--model", default="autodeeplab-s", choices=sorted(PAPER_FILTER_MULTIPLIERS),
                   help="the paper's network (its filter multiplier F)")
    p.add_argument("--genotype", default="autodeeplab", choices=sorted(GENOTYPES),
                   help="architecture (cell and path)")
    p.add_argument("--memory-format", default="channels_last",
                   choices=("channels_last", "contiguous"),
                   help="layout of the weights and images (train.py: channels_last)")
    return p


def build(args, crop: int):
    """The retrained network of `args` in training mode and its step on one random batch at
    `crop`: (model, criterion, images, targets, step), the step as train.py makes it."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = RetrainConfig(num_classes=args.num_classes, genotype=GENOTYPES[args.genotype],
                           filter_multiplier=PAPER_FILTER_MULTIPLIERS[args.model])
    layout = getattr(torch, f"{args.memory_format}_format" if args.memory_format ==
                     "contiguous" else args.memory_format)
    model = AutoDeepLab(config).to(device, memory_format=layout).train()
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4,
                                fused=True)  # as train.py
    images = torch.randn(args.batch_size, 3, crop, crop, device=device).contiguous(
        memory_format=layout)
    targets = torch.randint(0, args.num_classes, (args.batch_size, crop, crop), device=device)
    autocast, new_scaler = precision(args, device)
    scaler = new_scaler()

    def step():
        with autocast():
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return model, criterion, images, targets, step


def measure(args, crop: int) -> dict:
    device = torch.device(args.device)
    model, criterion, images, targets, step = build(args, crop)
    med, low = timed(step, device, args.warmup, args.repeats)
    peak = peak_memory_gib(device)
    forward_flops, total_flops = count_flops(lambda: criterion(model(images), targets))
    model.zero_grad(set_to_none=True)
    return {
        "model": args.model, "genotype": args.genotype, "crop": crop, "batch": args.batch_size,
        "device": str(device), "amp": args.amp, "tf32": args.tf32,
        "memory_format": args.memory_format,
        "threads": torch.get_num_threads(),
        "step_s": {"median": round(med, 3), "min": round(low, 3)},
        "images_per_s": round(args.batch_size / med, 2),
        "peak_memory_gib": round(peak, 3),
        "forward_gflop": round(forward_flops / 1e9, 2),
        "forward_backward_gflop": round(total_flops / 1e9, 2),
        **throughput(total_flops, low, device),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    }


if __name__ == "__main__":
    run_per_crop(get_args_parser().parse_args(), __file__, measure)
