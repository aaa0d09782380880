"""The GPU check: everything this project needs a GPU to verify, in one call of a few minutes.

    python3 bench/gpu_check.py --out-dir $OUT          # on a GPU machine (make gpu-check)
    python3 bench/gpu_check.py --device cpu --tiny     # the same checks at toy sizes (tests)

It installs nothing and runs with the machine's own torch, whatever its version: GPU images
often have no package registry. TensorBoard logs fall back to torch's writer where
tensorboardX is missing (utils/run.py).

Checks, in this order (correctness first, then the benchmarks); each runs in its own process
with its own time limit, and a failure is recorded and the next check runs:

- `environment`: torch, CUDA, the GPU, native bf16.
- `device tests`: the numerical tests (`pytest -m device`) with AUTODEEPLAB_TEST_DEVICE set:
  the fast supernet against the plain one (modeling/plain_supernet.py) at every fast-path
  threshold, SeparableConv, the pointwise grid, --checkpoint-cells, autocast in bf16 and fp16,
  and the search's two steps as CUDA graphs against eager ones (tests/test_cuda_graphs.py).
- `parity`: one forward and backward of a small supernet in float32, bf16 and fp16 autocast
  on the device against the float64 plain supernet on the CPU (relative errors).
- `end to end`: a tiny search -> decode -> retrain (interrupted, resumed) -> predict on the
  device, through the command lines, and on CUDA a tiny search with --cuda-graphs (its steps
  against eager ones are a device test, tests/test_cuda_graphs.py).
- `ddp`: two processes of train.py under torchrun on the one device, one image each, with
  gloo standing in for NCCL (AUTODEEPLAB_DIST_BACKEND) and torch's SyncBatchNorm on CUDA
  (utils/sync_batchnorm.py elsewhere). One GPU cannot check NCCL itself.
- `search step`: bench/search_step.py at the paper's setting (F = 8, B = 5, L = 12, batch 2,
  crop 321): float32 with TF32 off and on, bf16 and fp16 autocast, float32 and bf16 with
  both steps as CUDA graphs (--cuda-graphs), and float32 on the CPU's fast paths (against the
  GPU's defaults); time, peak memory and operator calls.
- `retrain step`: bench/retrain_step.py, Auto-DeepLab-S at crop 769, batch 2, float32
  channels-last (as train.py runs) and contiguous, and bf16.
- `latency`: bench/latency.py, batch-1 inference of S, M and L at 512 x 1024 and 1024 x 2048
  in float32, bf16 and fp16.

Writes `gpu_check.json` (after every check, so a cut-off run keeps what finished) and
`gpu_check.md` to --out-dir.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# Tiny runs of the command lines, shared by `end to end` and `ddp`.
TINY_SEARCH = ["--dataset", "synthetic", "--epochs", "2", "--alpha-epoch", "1",
               "--num-samples", "8", "--image-size", "48", "48", "--crop-size", "32",
               "--batch-size", "2", "--filter-multiplier", "2", "--block-multiplier", "2",
               "--steps", "2", "--num-layers", "3", "--workers", "0"]
TINY_RETRAIN = ["--dataset", "synthetic", "--filter-multiplier", "2", "--crop-size", "32",
                "--batch-size", "2", "--workers", "0", "--max-samples", "4",
                "--warmup-iters", "1", "--iters", "4", "--eval-interval", "2"]


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a rehearsal)")
    p.add_argument("--out-dir", default=str(REPO / "run" / "gpu-check"),
                   help="gpu_check.json, gpu_check.md and the runs' folders")
    p.add_argument("--tiny", action="store_true",
                   help="toy sizes everywhere: checks the check itself in a minute on a CPU")
    p.add_argument("--only", nargs="+", default=None, metavar="CHECK",
                   help="run these checks only (names as in the report, e.g. parity)")
    return p


def run(command: list[str], timeout: float, env: dict | None = None) -> dict:
    """A subprocess's outcome: ok, seconds, the tail of its output."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})
        ok, output = done.returncode == 0, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        ok, output = False, f"timed out after {timeout} s\n{err.stdout or ''}{err.stderr or ''}"
    return {"ok": ok, "seconds": round(time.perf_counter() - start, 1),
            "command": " ".join(command[1:]), "output_tail": output[-3000:]}


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def environment(args) -> dict:
    device = torch.device(args.device)
    info = {"ok": True, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return {**info, "ok": False, "error": "torch sees no GPU"}
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, memory_gib=round(props.total_memory / 2 ** 30, 1),
                    capability=f"{props.major}.{props.minor}",
                    native_bf16=torch.cuda.is_bf16_supported(including_emulation=False))
    return info


def device_tests(args) -> dict:
    selection = ["-k", "fast_supernet_equals and defaults"] if args.tiny else []
    result = run([sys.executable, "-m", "pytest", "-q", "-m", "device", "-p", "no:cacheprovider",
                  "tests/test_supernet.py", "tests/test_cuda_graphs.py", *selection], 900,
                 env={"AUTODEEPLAB_TEST_DEVICE": args.device})
    summary = [line for line in result["output_tail"].splitlines() if " passed" in line
               or " failed" in line or " error" in line]
    return {**result, "summary": summary[-1] if summary else ""}


def parity(args) -> dict:
    """Loss and gradients of one small supernet on the device, in float32 and under autocast,
    against the plain supernet (modeling/plain_supernet.py) in float64 on the CPU."""
    from modeling.plain_supernet import copy_fast_to_plain, corresponding_parameters
    from modeling.supernet import AutoDeepLabSearch, SupernetConfig

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = dict(num_classes=3, num_layers=4, filter_multiplier=4, block_multiplier=3, steps=3)
    model = AutoDeepLabSearch(SupernetConfig(**config))
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_(0, 1)
    x, target = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    reference = AutoDeepLabSearch(SupernetConfig(**config, implementation="plain")).double()
    copy_fast_to_plain(model, reference)
    loss = torch.nn.functional.cross_entropy(reference(x.double()), target)
    loss.backward()
    pairs = corresponding_parameters(model, reference)
    plain = dict(reference.named_parameters())
    theirs = torch.cat([plain[name].grad.flatten() for _, _, name in pairs])
    # TF32 off: the float32 row measures our kernels, not the tensor cores' precision.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def errors(on: torch.device, dtype) -> dict:
        """Relative errors of the loss and of all gradients together (norm of the difference
        over the reference's norm) of the fast supernet on `on` under autocast `dtype`."""
        mine = copy.deepcopy(model).to(on)
        with torch.autocast(on.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = torch.nn.functional.cross_entropy(mine(x.to(on)), target.to(on))
        out.float().backward()
        grads = dict(mine.named_parameters())
        ours = torch.cat([grads[name].grad[rows].double().cpu().flatten()
                          for name, rows, _ in pairs])
        return {"loss_rel_error": abs(out.item() - loss.item()) / abs(loss.item()),
                "grad_rel_error": float((ours - theirs).norm() / theirs.norm())}

    # The float32 bound is the CPU's own float32 error, times ten: batch norm over the few
    # pixels of the deepest levels amplifies rounding, on any device alike. Autocast rows are
    # reported, and only checked to be sane.
    cpu_fp32 = errors(torch.device("cpu"), None)
    limits = {"fp32": max(10 * max(cpu_fp32.values()), 1e-6), "bf16": 0.5, "fp16": 0.5}
    rows, ok = {"cpu fp32": cpu_fp32}, True
    modes = (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16))
    if device.type != "cuda":  # the entry scripts autocast on CUDA only
        modes = modes[:1]
    for name, dtype in modes:
        try:
            rows[name] = {**errors(device, dtype), "limit": limits[name]}
            ok &= max(rows[name]["loss_rel_error"], rows[name]["grad_rel_error"]) <= limits[name]
        except Exception as err:  # noqa: BLE001 (recorded: the check reports, never stops)
            rows[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
            ok = False
    return {"ok": ok, **rows}


def search_step(args) -> dict:
    sizes = (["--crops", "32", "--filter-multiplier", "2", "--num-layers", "3", "--steps",
              "2", "--block-multiplier", "2", "--repeats", "1", "--warmup", "1"] if args.tiny
             else ["--crops", "321", "--repeats", "5", "--warmup", "3"])
    variants = {"fp32, TF32 off": ["--tf32", "off"], "fp32, TF32 on": ["--tf32", "on"],
                "bf16": ["--amp", "bf16"], "fp16": ["--amp", "fp16"],
                "fp32, TF32 off, CUDA graphs": ["--tf32", "off", "--cuda-graphs"],
                "bf16, CUDA graphs": ["--amp", "bf16", "--cuda-graphs"],
                # The GPU's fast-path defaults (no oneDNN workarounds, grouped atrous
                # convolutions, strided matmul outputs) against the CPU's, never timed on a GPU.
                "fp32, TF32 off, the CPU's fast paths": ["--tf32", "off", "--fast-paths", "cpu"]}
    if args.tiny:  # one variant per flag is enough to rehearse
        variants = {name: variants[name] for name in ("fp32, TF32 off", "bf16")}
    if not args.device.startswith("cuda"):  # CUDA graphs, and autocast, need CUDA
        variants = {name: flags for name, flags in variants.items() if "--cuda-graphs" not in flags}
    rows, ok = {}, True
    for name, flags in variants.items():
        result = run([sys.executable, "bench/search_step.py", "--device", args.device,
                      "--batch-size", "2", *sizes, *flags], 300)
        lines = json_lines(result["output_tail"]) if result["ok"] else []
        rows[name] = lines[0] if lines else result
        ok &= bool(lines)
    return {"ok": ok, **rows}


def retrain_step(args) -> dict:
    sizes = (["--crops", "64", "--repeats", "1", "--warmup", "1"] if args.tiny
             else ["--crops", "769", "--repeats", "5", "--warmup", "3"])
    rows, ok = {}, True
    variants = {"fp32": [], "fp32, contiguous": ["--memory-format", "contiguous"],
                "bf16": ["--amp", "bf16"]}
    for name, flags in list(variants.items())[:1 if args.tiny else None]:
        result = run([sys.executable, "bench/retrain_step.py", "--device", args.device,
                      "--model", "autodeeplab-s", "--batch-size", "2", *sizes, *flags], 300)
        lines = json_lines(result["output_tail"]) if result["ok"] else []
        rows[name] = lines[0] if lines else result
        ok &= bool(lines)
    return {"ok": ok, **rows}


def latency(args) -> dict:
    sizes = (["--sizes", "32x48", "--repeats", "1", "--warmup", "1", "--num-classes", "3"]
             if args.tiny else ["--archs", "autodeeplab-m", "autodeeplab-l", "--sizes",
                                "512x1024", "1024x2048", "--repeats", "10"])
    result = run([sys.executable, "bench/latency.py", "--devices", args.device, *sizes], 300)
    rows = [line for line in result["output_tail"].splitlines() if line.startswith("|")]
    return {**result, "ok": result["ok"] and len(rows) > 2, "table": rows}  # header, rule, rows


def end_to_end(args, out: Path) -> dict:
    runs = out / "end_to_end"
    device = ["--device", args.device]
    amp = ["--amp"] if args.device.startswith("cuda") else []
    stages = [
        ("search", ["train_autodeeplab.py", *TINY_SEARCH, *device, *amp,
                    "--out-dir", str(runs / "search")]),
        ("decode", ["decode_autodeeplab.py", "--resume", str(runs / "search" /
                                                               "checkpoint.pth.tar")]),
        ("retrain, interrupted", ["train.py", *TINY_RETRAIN, *device, *amp, "--genotype",
                                  str(runs / "search" / "genotype.json"), "--stop-after-iters",
                                  "2", "--out-dir", str(runs / "retrain")]),
        ("retrain, resumed", ["train.py", "--resume", str(runs / "retrain" /
                                                          "checkpoint.pth.tar")]),
        ("predict", ["predict.py", "--checkpoint", str(runs / "retrain" / "checkpoint.pth.tar"),
                     *device, "--input", str(runs / "images"), "--out-dir",
                     str(runs / "predictions")]),
    ]
    if args.device.startswith("cuda"):  # 4 epochs of 4 iterations: both graphs replayed
        stages.append(("search, CUDA graphs", [
            "train_autodeeplab.py", *TINY_SEARCH, *device, "--cuda-graphs", "--epochs", "4",
            "--num-samples", "16", "--alpha-epoch", "0", "--out-dir", str(runs / "graphs")]))
    images = run([sys.executable, "write_samples.py", "--dataset", "synthetic", "--out-dir",
                  str(runs / "images"), "--count", "2"], 120)
    results = {"images": images}
    for name, argv in stages:
        results[name] = run([sys.executable, *argv], 300)
        if not results[name]["ok"]:
            break
    ok = all(r["ok"] for r in results.values()) and len(results) == len(stages) + 1
    if ok and (runs / "graphs" / "search.log").exists():
        log = (runs / "graphs" / "search.log").read_text()
        results["graphs captured"] = log.count("captured as a CUDA graph")
        ok = results["graphs captured"] == 2
    if ok:
        state = torch.load(runs / "retrain" / "checkpoint.pth.tar", map_location="cpu",
                           weights_only=True)
        ok = state["step"] == 4
        results["resumed to"] = state["step"]
    return {"ok": ok, **results}


def ddp(args, out: Path) -> dict:
    from engine.genotype_io import save_genotype
    from modeling.genotypes import GENOTYPES
    genotype = out / "autodeeplab.json"
    save_genotype(GENOTYPES["autodeeplab"], genotype)
    result = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                  "--standalone", "train.py", *TINY_RETRAIN, "--batch-size", "1",
                  "--device", args.device, "--genotype", str(genotype), "--out-dir",
                  str(out / "ddp")], 300,
                 env={"AUTODEEPLAB_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1"})
    log = out / "ddp" / "train.log"
    in_sync = log.exists() and "weights identical on all 2 processes" in log.read_text()
    return {**result, "ok": result["ok"] and in_sync, "replicas_in_sync": in_sync,
            "images_per_process": 1}


def report(results: dict, out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    env = results.get("environment", {})
    lines = [f"# GPU check: {env.get('gpu', env.get('device', '?'))}", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, Python {env.get('python')}",
             "", "| check | result | seconds |", "|---|---|---|"]
    for name, result in results.items():
        seconds = result.get("seconds", "")
        lines.append(f"| {name} | {'ok' if result.get('ok') else '**failed**'} | {seconds} |")
    for name in ("search step", "retrain step"):
        for variant, row in results.get(name, {}).items():
            if isinstance(row, dict) and "images_per_s" in row:
                step = row.get("weight_step_s", row.get("step_s"))
                lines.append(f"- {name}, {variant}: {step['median']} s per step (median), "
                             f"{row['peak_memory_gib']} GiB peak")
    for variant, row in results.get("parity", {}).items():
        if isinstance(row, dict) and "grad_rel_error" in row:
            limit = f" (limit {row['limit']:.2g})" if "limit" in row else ""
            lines.append(f"- parity {variant}: loss {row['loss_rel_error']:.2e}, gradients "
                         f"{row['grad_rel_error']:.2e}{limit}")
    if results.get("latency", {}).get("table"):
        lines += ["", "Latency at batch 1:", "", *results["latency"]["table"]]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main(args) -> int:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Correctness first, then the benchmarks: a call cut off by its time limit keeps the
    # answers that matter most (the report is written after every check).
    checks = {"environment": lambda: environment(args), "device tests": lambda: device_tests(args),
              "parity": lambda: parity(args), "end to end": lambda: end_to_end(args, out),
              "ddp": lambda: ddp(args, out), "search step": lambda: search_step(args),
              "retrain step": lambda: retrain_step(args), "latency": lambda: latency(args)}
    unknown = set(args.only or ()) - set(checks)
    if unknown:
        sys.exit(f"error: unknown check(s) {', '.join(sorted(unknown))}; the checks are: "
                 f"{', '.join(checks)}")
    results = {}
    for name, check in checks.items():
        if args.only and name not in args.only and name != "environment":
            continue
        start = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            results[name] = check()
        except Exception as err:  # noqa: BLE001 (recorded: the check reports, never stops)
            results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:2000]}
        results[name].setdefault("seconds", round(time.perf_counter() - start, 1))
        print(f"    {'ok' if results[name]['ok'] else 'FAILED'} "
              f"({results[name]['seconds']} s)", flush=True)
        report(results, out)
    print((out / "gpu_check.md").read_text())
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
