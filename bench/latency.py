"""Inference latency at batch 1: networks at given image sizes, on the CPU and, when present,
on CUDA, each beside the paper's Auto-DeepLab-S measured in the same run.

    .venv/bin/python bench/latency.py --archs autodeeplab-s autodeeplab-m autodeeplab-l \
        --sizes 360x480 512x1024
    .venv/bin/python bench/latency.py --genotypes docs/camvid/genotypes/searched-s0.json \
        --filter-multiplier 20 --sizes 360x480 --onnx
    .venv/bin/python bench/latency.py --checkpoints run/camvid/retrain-X/best.pth.tar

A pass is one forward of one image in eval mode under `torch.inference_mode`, with the
weights channels-last as train.py and predict.py run them, timed as
predict.py times it (utils/latency.py: warm-up passes first; on CUDA the clock waits for the
device). The CPU runs in float32 with the stated threads; CUDA in float32 (TF32 as torch's
defaults) and under autocast in bf16 and fp16. `--onnx` also times the exported network in
onnxruntime on the CPU, with as many threads. Figures on a shared machine move between runs:
compare the ratios to S (`vs_S`) and to the same network's eager float32 pass
(`vs_eager_fp32`), which come from one run. Prints a markdown table; `--out`
appends one JSON object per measurement.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.genotype_io import load_genotype  # noqa: E402
from engine.retrain import export_onnx, load_model, place  # noqa: E402
from modeling.genotypes import GENOTYPES  # noqa: E402
from modeling.retrain_net import (PAPER_FILTER_MULTIPLIERS, AutoDeepLab,  # noqa: E402
                                  RetrainConfig)
from utils.flops import count_parameters, multi_adds  # noqa: E402
from utils.latency import WARMUP_PASSES, describe_device, summarise, time_passes  # noqa: E402

REFERENCE = "autodeeplab-s"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", nargs="*", default=[], choices=sorted(PAPER_FILTER_MULTIPLIERS),
                   help="the paper's networks (S is always measured, as the reference)")
    p.add_argument("--genotypes", nargs="*", default=[], metavar="JSON|NAME",
                   help="genotype files, or names of those in genotypes/")
    p.add_argument("--filter-multiplier", type=int, default=20,
                   help="F of the --genotypes networks (S: 20, M: 32, L: 48)")
    p.add_argument("--checkpoints", nargs="*", default=[],
                   help="retrain checkpoints (their own F and classes, trained weights)")
    p.add_argument("--num-classes", type=int, default=19,
                   help="classes of the --archs and --genotypes networks (Cityscapes: 19)")
    p.add_argument("--sizes", nargs="+", default=["512x1024"], metavar="HxW",
                   help="image sizes")
    p.add_argument("--devices", nargs="+", default=None,
                   help="devices (default: cpu, and cuda when present)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's, one per core)")
    p.add_argument("--warmup", type=int, default=WARMUP_PASSES, help="untimed passes first")
    p.add_argument("--repeats", type=int, default=10, help="timed passes")
    p.add_argument("--onnx", action="store_true",
                   help="also time the ONNX export in onnxruntime (CPU)")
    p.add_argument("--out", default=None, help="append one JSON object per measurement")
    return p


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: --sizes takes HxW, e.g. 512x1024; got {text!r}") from None
    return height, width


def networks(args) -> dict[str, callable]:
    """Name -> a function building the network (CPU, eval mode); S first."""
    def paper(arch):
        torch.manual_seed(0)
        return AutoDeepLab(RetrainConfig(args.num_classes, GENOTYPES["autodeeplab"],
                                         PAPER_FILTER_MULTIPLIERS[arch])).eval()

    def searched(spec):
        torch.manual_seed(0)
        return AutoDeepLab(RetrainConfig(args.num_classes, load_genotype(spec),
                                         args.filter_multiplier)).eval()

    built = {REFERENCE: partial(paper, REFERENCE)}
    built.update({arch: partial(paper, arch) for arch in args.archs})
    built.update({f"{Path(spec).stem} (F={args.filter_multiplier})": partial(searched, spec)
                  for spec in args.genotypes})
    built.update({str(path): partial(lambda p: load_model(p, "cpu")[0], path)
                  for path in args.checkpoints})
    return built


def settings(devices) -> list[tuple[str, str]]:
    """(device, precision) pairs: float32 on the CPU; float32, bf16 and fp16 on CUDA."""
    out = []
    for device in devices:
        out += [(device, "fp32")] if not device.startswith("cuda") else \
            [(device, "fp32"), (device, "bf16"), (device, "fp16")]
    return out


def eager_seconds(model, size, device, dtype, args) -> list[float]:
    images = torch.randn(1, 3, *size, device=device)
    autocast = nullcontext if dtype == "fp32" else partial(
        torch.autocast, device_type=device.type,
        dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])

    def one_pass():
        with torch.inference_mode(), autocast():
            return model(images)
    return time_passes(one_pass, device, warmup=args.warmup, repeats=args.repeats)


def onnx_seconds(model, size, args) -> list[float]:
    import numpy as np
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    return time_passes(lambda: session.run(None, {"images": images}), torch.device("cpu"),
                       warmup=args.warmup, repeats=args.repeats)


def main(args) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [parse_size(s) for s in args.sizes]
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for name, build in networks(args).items():
        model = build()
        params = count_parameters(model)
        for size in sizes:
            adds = multi_adds(model, size)
            runs = [(d, p, "eager") for d, p in settings(devices)]
            if args.onnx:
                runs.append(("cpu", "fp32", "onnxruntime"))
            for device_name, dtype, runtime in runs:
                device = torch.device(device_name)
                if runtime == "onnxruntime":
                    seconds = onnx_seconds(model, size, args)
                else:
                    seconds = eager_seconds(place(model, device), size, device, dtype, args)
                    model.to("cpu")
                rows.append({"network": name, "size": f"{size[0]}x{size[1]}",
                             "device": describe_device(device), "precision": dtype,
                             "runtime": runtime, "params_m": round(params / 1e6, 3),
                             "multi_adds_g": round(adds / 1e9, 2), **summarise(seconds),
                             "torch": torch.__version__, "machine": platform.machine()})
    reference = {(r["size"], r["device"], r["precision"], r["runtime"]): r["ms_mean"]
                 for r in rows if r["network"] == REFERENCE}
    eager = {(r["network"], r["size"], r["device"]): r["ms_mean"] for r in rows
             if r["runtime"] == "eager" and r["precision"] == "fp32"}
    for row in rows:
        ref = reference.get((row["size"], row["device"], row["precision"], row["runtime"]))
        row["vs_S"] = round(row["ms_mean"] / ref, 3) if ref else None
        same = eager.get((row["network"], row["size"], row["device"]))
        row["vs_eager_fp32"] = round(row["ms_mean"] / same, 3) if same else None
    print(table(rows))
    if args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return rows


def table(rows) -> str:
    lines = ["| network | size | device | precision | runtime | params (M) | Multi-Adds (G) | "
             "ms mean | ms p90 | images/s | vs S | vs eager fp32 |", "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['network']} | {r['size']} | {r['device']} | {r['precision']} | "
                     f"{r['runtime']} | {r['params_m']:.2f} | {r['multi_adds_g']:.1f} | "
                     f"{r['ms_mean']:.1f} | {r['ms_p90']:.1f} | {r['images_per_s']:.2f} | "
                     f"{r['vs_S']:.2f} | {r['vs_eager_fp32']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
