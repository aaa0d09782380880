"""Inference speed: wall-clock times of whole forward passes, and their summary.

One source for predict.py (per image, as it segments) and bench/latency.py (repeated passes
at fixed sizes). On CUDA the clock waits for the device before and after each pass, so a time
is the pass's, not its kernel launches'.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

# Passes run before timing: the first ones pay for allocations, oneDNN primitive creation
# (CPU) or cuDNN algorithm selection (CUDA).
WARMUP_PASSES = 2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """`fn()` and its wall time in seconds, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def time_passes(fn: Callable[[], object], device: torch.device, *, warmup: int = WARMUP_PASSES,
                repeats: int = 10) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed ones."""
    for _ in range(warmup):
        timed(fn, device)
    return [timed(fn, device)[1] for _ in range(repeats)]


def summarise(seconds: list[float], batch: int = 1) -> dict:
    """Mean and 90th-percentile milliseconds per pass, and images per second (`batch` images
    per pass)."""
    times = np.asarray(seconds, dtype=np.float64)
    return {"passes": len(times), "batch": batch, "ms_mean": 1e3 * float(times.mean()),
            "ms_p90": 1e3 * float(np.percentile(times, 90)),
            "images_per_s": batch * len(times) / float(times.sum())}


def describe_device(device: torch.device) -> str:
    """The device a time was taken on: GPU name, or the CPU and its thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"CPU, {torch.get_num_threads()} threads"
