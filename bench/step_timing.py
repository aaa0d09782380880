"""What the step benchmarks share: timing, the matmul reference, FLOP counting, fresh processes.

A benchmark script defines `measure(args, crop) -> dict` and calls `run_per_crop`, which
measures every crop in a fresh process of its own so that the peak resident memory is that
configuration's alone.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from utils.allocator import allocator_in_use, fast_allocator_env
from utils.onednn import ENV as ONEDNN_CACHE_ENV
from utils.onednn import size_primitive_cache


def add_common_args(parser, crops, batch_size):
    parser.add_argument("--crops", type=int, nargs="+", default=crops, help="crop sizes")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="images per step")
    parser.add_argument("--num-classes", type=int, default=19, help="classes (Cityscapes: 19)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (median and min)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--system-allocator", action="store_true",
                        help="measure with the system malloc, not tcmalloc/jemalloc where "
                             "installed (what the entry scripts use, utils/allocator.py)")
    parser.add_argument("--default-onednn-cache", action="store_true",
                        help="measure with oneDNN's default primitive cache (1024), not the "
                             "entry scripts' larger one (utils/onednn.py)")
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"),
                        help="autocast dtype on CUDA, as --amp --amp-dtype of the entry scripts "
                             "(fp16 with loss scaling)")
    parser.add_argument("--tf32", default="default", choices=("default", "on", "off"),
                        help="TF32 for CUDA matmuls and convolutions (default: torch's, which "
                             "allows it for convolutions only)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child


def precision(args, device):
    """(autocast factory, a new GradScaler factory) for `--amp` on `device`, after setting
    `--tf32`."""
    from utils.amp import amp_context
    if args.tf32 != "default":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = \
            args.tf32 == "on"
    enabled = args.amp != "off"
    graphs = getattr(args, "cuda_graphs", False)  # bench/search_step.py only
    if graphs and (device.type != "cuda" or args.amp == "fp16"):
        sys.exit("error: --cuda-graphs needs --device cuda and float32 or --amp bf16 (fp16's "
                 "loss scaling reads the GPU every step)")
    autocast, scaler = amp_context(enabled, args.amp if enabled else "bf16", device,
                                   **({"cache": False} if graphs else {}))
    return autocast, lambda: torch.amp.GradScaler("cuda", enabled=scaler.is_enabled())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup, repeats):
    """Median and min seconds of `fn` over `repeats` calls after `warmup` untimed ones."""
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


def alternate(sides: dict, pairs: int) -> dict:
    """Time the steps of versions A and B alternately, ABBA..., after one untimed round of
    each, so that a slow minute of a shared machine costs both alike.

    `sides` maps "A" and "B" to (prepare, {kind: step}): `prepare()` runs untimed before a
    version's steps, each `step()` is timed. Returns per kind the medians and minima of each
    version's seconds, and B/A of the medians, of the process CPU time and of the minima.
    """
    kinds = list(sides["A"][1])
    wall = {(v, kind): [] for v in "AB" for kind in kinds}
    cpu = {key: [] for key in wall}
    for version in "AB":
        prepare, steps = sides[version]
        prepare()
        for step in steps.values():
            step()
    for i in range(pairs):
        for version in ("AB" if i % 2 == 0 else "BA"):
            prepare, steps = sides[version]
            prepare()
            for kind, step in steps.items():
                t, p = time.perf_counter(), time.process_time()
                step()
                wall[(version, kind)].append(time.perf_counter() - t)
                cpu[(version, kind)].append(time.process_time() - p)
    result = {}
    for kind in kinds:
        a, b = wall[("A", kind)], wall[("B", kind)]
        result[f"{kind}_step_s"] = {"A_median": round(statistics.median(a), 3),
                                    "B_median": round(statistics.median(b), 3),
                                    "A_min": round(min(a), 3), "B_min": round(min(b), 3)}
        result[f"{kind}_B_over_A"] = {
            "median": round(statistics.median(b) / statistics.median(a), 3),
            "cpu_time": round(statistics.median(cpu[("B", kind)])
                              / statistics.median(cpu[("A", kind)]), 3),
            "min": round(min(b) / min(a), 3)}
    return result


def matmul_gflops(device, n: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matmul rate, measured now, in this process."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return 2 * n ** 3 / timed(lambda: a @ b, device, 2, repeats)[1] / 1e9


def peak_memory_gib(device) -> float:
    """Peak GPU memory allocated on CUDA, else this process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                       transposed, _output_padding, _groups, output_mask, out_shape=None) -> int:
    """Backward of a convolution: one forward's FLOPs for each gradient asked for.

    torch's own formula multiplies grouped convolutions by the group count (a depthwise conv's
    backward comes out ~40x its forward), which would make every grouped-conv model look slow
    per FLOP; this counts what the kernels compute."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(loss_fn) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs of `loss_fn()` and its backward."""
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.convolution_backward: conv_backward_flop})
    with counter:
        loss = loss_fn()
        forward = counter.get_total_flops()
        loss.backward()
    return forward, counter.get_total_flops()


# Operators that only make a view of their input (no kernel runs on a GPU, but each call still
# costs dispatch time on the host).
VIEW_OPS = frozenset(f"aten::{name}" for name in (
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "slice", "select", "narrow",
    "expand", "as_strided", "unsqueeze", "squeeze", "alias", "flatten", "unflatten", "split",
    "split_with_sizes", "chunk", "unbind", "diagonal", "view_as", "expand_as", "detach",
    "_reshape_alias", "movedim", "unfold", "contiguous"))


def count_operator_calls(step) -> dict:
    """The torch operator calls of one `step()`, forward and backward, from the profiler:
    `top_level` (calls made by our code or by autograd, not from inside another operator),
    of those `non_view` (all but VIEW_OPS, and those of VIEW_OPS that copy, `copying_views`:
    a `reshape` or `contiguous` that cannot be a view runs a kernel) and `to` (dtype or
    device conversions), and `all_events` (nested calls included). Every call costs host
    dispatch time whatever its size: on a GPU, that time bounds a step from below."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if e.cpu_parent is None or not
           e.cpu_parent.name.startswith("aten::")]
    copying = sum(e.name in VIEW_OPS and _runs_kernel(e) for e in top)
    return {"top_level": len(top),
            "non_view": sum(e.name not in VIEW_OPS for e in top) + copying,
            "copying_views": copying, "to": sum(e.name == "aten::to" for e in top),
            "all_events": len(events)}


def _runs_kernel(event) -> bool:
    """Whether a profiler event calls, at any depth, an operator that is not a view."""
    return any(child.name not in VIEW_OPS or _runs_kernel(child)
               for child in event.cpu_children if child.name.startswith("aten::"))


def throughput(total_flops: int, seconds: float, device) -> dict:
    """Achieved GFLOP/s against the matmul rate measured in the same process."""
    mm = matmul_gflops(device)
    achieved = total_flops / seconds / 1e9
    return {"achieved_gflops": round(achieved, 1), "matmul_gflops": round(mm, 1),
            "fraction_of_matmul": round(achieved / mm, 4)}


def run_per_crop(args, script: str, measure) -> None:
    """`measure(args, crop)` for each crop in a fresh process; one JSON line per crop."""
    if args.one is not None:
        print(json.dumps({**measure(args, args.one), "allocator": allocator_in_use(),
                          "onednn_primitive_cache": os.environ.get(ONEDNN_CACHE_ENV, "default")}),
              flush=True)
        return
    for crop in args.crops:
        argv = [sys.executable, script, "--one", str(crop)]
        for key, value in vars(args).items():
            if key in ("crops", "one") or value is False or value is None:
                continue
            argv.append("--" + key.replace("_", "-"))
            if value is not True:
                argv.append(str(value))
        env = (None if args.system_allocator else fast_allocator_env()) or dict(os.environ)
        if args.default_onednn_cache:
            env.pop(ONEDNN_CACHE_ENV, None)
        else:
            size_primitive_cache(env=env)
        out = subprocess.run(argv, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(f"crop {crop} failed:\n{out.stderr}")
        print(out.stdout.strip(), flush=True)
