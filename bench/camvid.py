"""Evidence on real data: search on CamVid, decode, and retrain the searched network against the
paper's architecture and random architectures of the same space, at equal budget.

    .venv/bin/python bench/camvid.py                         # CPU protocol, about 1.3 h on 2 cores
    .venv/bin/python bench/camvid.py --protocol gpu --device cuda
    .venv/bin/python bench/camvid.py --protocol smoke        # a few iterations (the test suite)

Every stage is the public command line (train_autodeeplab.py, decode_autodeeplab.py, train.py),
run in a subprocess with its log in its own run folder under --out-dir. Finished stages are
skipped and an interrupted one resumes from its checkpoint, so running the same command again
continues where it stopped. The data is read from --data-root, never copied.

Writes to --out-dir: `results.csv` and `results.md` (val mIoU, per-class IoU, parameters,
Multi-Adds, training time of every retrained network, mean and spread over seeds), `search.png`
(search val mIoU and alpha/beta entropy per epoch), `miou_vs_multiadds.png`, and the decoded
architecture's picture in `search/architecture.png`.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from modeling.genotypes import GENOTYPES, Genotype, random_genotype  # noqa: E402
from modeling.retrain_net import AutoDeepLab, RetrainConfig  # noqa: E402
from modeling.search_space import PRIMITIVES  # noqa: E402
from utils.flops import count_parameters, multi_adds  # noqa: E402

DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "camvid"

# Each protocol: the flags of the search and of every retraining, and the evaluation size used
# for Multi-Adds (the val images after --resize). The architecture warm-up (--alpha-epoch) is
# the paper's half of the search (20 of 40 epochs), scaled with the number of epochs.
PROTOCOLS = {
    # 2-core CPU, about 1.3 hours: images at a third of their size (120 x 160), F = 4 supernet
    # (8 epochs of 45 steps, ~45 min), F = 8 retraining (400 iterations, ~6 min per network).
    "cpu": dict(
        search=["--resize", "120", "--crop-size", "96", "--batch-size", "4",
                "--filter-multiplier", "4", "--block-multiplier", "5", "--steps", "5",
                "--num-layers", "12", "--epochs", "8", "--alpha-epoch", "4", "--workers", "1"],
        retrain=["--resize", "120", "--crop-size", "96", "--batch-size", "8",
                 "--filter-multiplier", "8", "--iters", "400", "--eval-interval", "400",
                 "--warmup-iters", "50", "--lr", "0.05", "--workers", "1"],
        eval_size=(120, 160)),
    # One GPU: full 360 x 480 resolution, the paper's search settings (40 epochs, architecture
    # from epoch 20, F = 8, batch 2, crop 321), a long retraining at the paper's S width.
    "gpu": dict(
        search=["--crop-size", "321", "--batch-size", "2", "--filter-multiplier", "8",
                "--block-multiplier", "5", "--steps", "5", "--num-layers", "12",
                "--epochs", "40", "--alpha-epoch", "20", "--workers", "4"],
        retrain=["--crop-size", "321", "--batch-size", "8", "--filter-multiplier", "20",
                 "--iters", "20000", "--eval-interval", "2000", "--warmup-iters", "1000",
                 "--lr", "0.05", "--workers", "4"],
        eval_size=(360, 480)),
    # The test suite's smoke run: a few iterations of everything.
    "smoke": dict(
        search=["--resize", "48", "--crop-size", "32", "--batch-size", "2", "--max-samples", "8",
                "--filter-multiplier", "2", "--block-multiplier", "2", "--steps", "2",
                "--num-layers", "3", "--epochs", "2", "--alpha-epoch", "1", "--workers", "0"],
        retrain=["--resize", "48", "--crop-size", "32", "--batch-size", "2", "--max-samples", "8",
                 "--filter-multiplier", "2", "--iters", "4", "--eval-interval", "4",
                 "--warmup-iters", "1", "--workers", "0"],
        eval_size=(48, 64)),
}
CLASS_NAMES_KEY = "per_class_iou"


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--protocol", default="cpu", choices=sorted(PROTOCOLS),
                   help="budget: cpu (2 cores, ~1.3 h), gpu (full resolution), smoke (seconds)")
    p.add_argument("--data-root", default=None,
                   help=f"CamVid in the SegNet layout (default: $AUTODEEPLAB_CAMVID, else "
                        f"{DEFAULT_ROOT})")
    p.add_argument("--out-dir", default=None, help="results folder (default: run/camvid-PROTOCOL)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="retraining seeds; every architecture is trained once per seed")
    p.add_argument("--num-random", type=int, default=3,
                   help="architectures drawn uniformly from the search space")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the search and A/B split")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    return p


def run_stage(name: str, script: str, argv: list[str], log_path: Path) -> float:
    """Run one entry script to completion, its output appended to `log_path`; seconds taken.
    A failure stops everything with the stage's name and the log's last lines."""
    command = [sys.executable, str(REPO / script), *argv]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command[1:])}", flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        sys.exit(f"error: stage {name} failed (exit {done.returncode}); see {log_path}:\n"
                 + "\n".join(tail))
    return seconds


def finished(run_dir: Path, marker: str) -> bool:
    return (run_dir / marker).exists()


def resume_or_start(run_dir: Path, argv: list[str]) -> list[str]:
    """An interrupted stage continues from its checkpoint; a new one starts in `run_dir`."""
    checkpoint = run_dir / "checkpoint.pth.tar"
    if checkpoint.exists():
        return ["--resume", str(checkpoint)]
    return [*argv, "--out-dir", str(run_dir)]


def search_and_decode(args, protocol, data, out: Path) -> Genotype:
    run_dir = out / "search"
    if not finished(run_dir, "genotype.json"):
        if not finished(run_dir, "search.done"):
            argv = [*data, *protocol["search"], "--seed", str(args.search_seed)]
            run_stage("search", "train_autodeeplab.py", resume_or_start(run_dir, argv),
                      out / "logs" / "search.log")
            (run_dir / "search.done").touch()
        run_stage("decode", "decode_autodeeplab.py",
                  ["--resume", str(run_dir / "checkpoint.pth.tar")], out / "logs" / "decode.log")
    return Genotype.load(run_dir / "genotype.json")


def architectures(args, searched: Genotype) -> dict[str, Genotype]:
    """Searched, the paper's, and `--num-random` uniform draws with the searched L and steps."""
    rng = np.random.default_rng(1000 + args.search_seed)
    archs = {"searched": searched, "paper": GENOTYPES["autodeeplab"]}
    for i in range(args.num_random):
        archs[f"random-{i + 1}"] = random_genotype(searched.num_layers, searched.steps, rng)
    return archs


def retrain(args, protocol, data, out: Path, name: str, genotype: Genotype, seed: int) -> dict:
    run_dir = out / "retrain" / f"{name}-seed{seed}"
    log = out / "logs" / f"retrain-{name}-seed{seed}.log"
    genotype_path = out / "genotypes" / f"{name}.json"
    if not genotype_path.exists():
        genotype_path.parent.mkdir(parents=True, exist_ok=True)
        genotype.save(genotype_path)
    if not finished(run_dir, "eval_val.json"):
        if not finished(run_dir, "train.done"):
            argv = [*data, *protocol["retrain"], "--genotype", str(genotype_path),
                    "--seed", str(seed)]
            run_stage(f"retrain {name} seed {seed}", "train.py", resume_or_start(run_dir, argv),
                      log)
            (run_dir / "train.done").touch()
        # The last iteration's model, not the best on val: no selection on the val split.
        run_stage(f"evaluate {name} seed {seed}", "train.py",
                  ["--resume", str(run_dir / "checkpoint.pth.tar"), "--eval-only"], log)
    metrics = json.loads((run_dir / "eval_val.json").read_text())
    with open(run_dir / "metrics.csv") as f:
        train_seconds = sum(float(row["seconds"]) for row in csv.DictReader(f))
    return {"arch": name, "seed": seed, "miou": metrics["miou"],
            "pixel_acc": metrics["pixel_acc"], "train_s": round(train_seconds, 1),
            **{f"iou_{k}": v for k, v in metrics[CLASS_NAMES_KEY].items()}}


def model_size(genotype: Genotype, num_classes: int, filter_multiplier: int,
               eval_size) -> tuple[float, float]:
    """(parameters in millions, Multi-Adds in billions at the evaluation size)."""
    config = RetrainConfig(num_classes=num_classes, genotype=genotype,
                           filter_multiplier=filter_multiplier, block_multiplier=genotype.steps)
    with torch.device("meta"):
        model = AutoDeepLab(config)
    return count_parameters(model) / 1e6, multi_adds(model, tuple(eval_size)) / 1e9


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def summarise(rows: list[dict], archs: dict[str, Genotype], sizes: dict, out: Path,
              search_rows: list[dict], op_mass: dict[str, float], command: str) -> None:
    """results.csv, results.md and the two plots."""
    class_keys = [k for k in rows[0] if k.startswith("iou_")]
    fields = ["arch", "seed", "miou", "pixel_acc", *class_keys, "params_m", "multi_adds_g",
              "train_s", "network_path"]
    for row in rows:
        row["params_m"], row["multi_adds_g"] = (round(v, 3) for v in sizes[row["arch"]])
        row["network_path"] = " ".join(map(str, archs[row["arch"]].network_path))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    by_arch: dict[str, list[dict]] = {}
    for row in rows:
        by_arch.setdefault(row["arch"], []).append(row)

    def mean_spread(values):
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return "n/a"
        if len(values) == 1:
            return f"{100 * values[0]:.1f}"
        return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"

    seeds = sorted({row["seed"] for row in rows})
    lines = [f"Command: `{command}`", "",
             f"val mIoU (%) over seeds {seeds}; mean ± standard deviation where more than one.",
             "", "| architecture | val mIoU | pixel acc. | params (M) | Multi-Adds (G) | "
             "train time (s) | network path |", "|---|---|---|---|---|---|---|"]
    for name, group in by_arch.items():
        params, madds = sizes[name]
        lines.append(f"| {name} | {mean_spread([r['miou'] for r in group])} | "
                     f"{mean_spread([r['pixel_acc'] for r in group])} | {params:.2f} | "
                     f"{madds:.2f} | {statistics.mean(r['train_s'] for r in group):.0f} | "
                     f"{group[0]['network_path']} |")
    names = [k[len("iou_"):] for k in class_keys]
    lines += ["", "Per-class IoU (%), mean over seeds:", "",
              "| architecture | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for name, group in by_arch.items():
        cells = []
        for key in class_keys:
            values = [r[key] for r in group if not math.isnan(r[key])]
            cells.append(f"{100 * statistics.mean(values):.1f}" if values else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Cells:", ""]
    for name, genotype in archs.items():
        cell = "; ".join(" + ".join(f"{op}({inp})" for inp, op in block) for block in genotype.cell)
        lines.append(f"- {name}: {cell}")
    lines += ["", "Search, per epoch:", "",
              "| epoch | val mIoU | alpha entropy | beta entropy | decoded path |",
              "|---|---|---|---|---|"]
    for r in search_rows:
        lines.append(f"| {r['epoch']} | {100 * float(r['val_miou']):.1f} | "
                     f"{float(r['alpha_entropy']):.3f} | {float(r['beta_entropy']):.3f} | "
                     f"{r['network_path']} |")
    lines += ["", "Final alphas: share of each operation's softmax weight over all edges:", "",
              "| " + " | ".join(op_mass) + " |", "|" + "---|" * len(op_mass),
              "| " + " | ".join(f"{100 * v:.1f}%" for v in op_mass.values()) + " |"]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in search_rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [100 * float(r["val_miou"]) for r in search_rows], marker="o")
    ax1.set(xlabel="search epoch", ylabel="supernet val mIoU (%)", title="search on CamVid")
    ax2.plot(epochs, [float(r["alpha_entropy"]) for r in search_rows], marker="o", label="alphas")
    ax2.plot(epochs, [float(r["beta_entropy"]) for r in search_rows], marker="s", label="betas")
    ax2.set(xlabel="search epoch", ylabel="mean entropy (nats)", title="architecture entropy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "search.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, group in by_arch.items():
        _, madds = sizes[name]
        values = [100 * r["miou"] for r in group]
        ax.scatter([madds] * len(values), values, label=name,
                   marker="*" if name == "searched" else "o", s=120 if name == "searched" else 40)
    ax.set(xlabel="Multi-Adds (G) at the evaluation size", ylabel="val mIoU (%)",
           title="retrained on CamVid, equal budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "miou_vs_multiadds.png", dpi=100)
    plt.close(fig)


def operation_mass(checkpoint: Path) -> dict[str, float]:
    """Share of softmax(alphas) per operation, averaged over the cell's edges."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    alphas = state["model"]["alphas"].float()
    probs = torch.softmax(alphas, dim=-1).mean(0)
    return {op: float(p) for op, p in zip(PRIMITIVES, probs)}


def main(args) -> Path:
    protocol = PROTOCOLS[args.protocol]
    root = Path(args.data_root or os.environ.get("AUTODEEPLAB_CAMVID") or DEFAULT_ROOT)
    if not (root / "train").is_dir() or not (root / "trainannot").is_dir():
        sys.exit(f"error: CamVid not found at {root} (needs train/ and trainannot/); give "
                 f"--data-root DIR or set AUTODEEPLAB_CAMVID")
    out = Path(args.out_dir or REPO / "run" / f"camvid-{args.protocol}")
    out.mkdir(parents=True, exist_ok=True)
    data = ["--dataset", "camvid", "--data-root", str(root)]
    if args.device:
        data += ["--device", args.device]
    command = " ".join(["python", "bench/camvid.py", *sys.argv[1:]])

    searched = search_and_decode(args, protocol, data, out)
    archs = architectures(args, searched)
    rows = [retrain(args, protocol, data, out, name, genotype, seed)
            for seed in args.seeds for name, genotype in archs.items()]

    width = int(flag_value(protocol["retrain"], "--filter-multiplier"))
    num_classes = len([k for k in rows[0] if k.startswith("iou_")])
    sizes = {name: model_size(g, num_classes, width, protocol["eval_size"])
             for name, g in archs.items()}
    with open(out / "search" / "metrics.csv") as f:
        search_rows = list(csv.DictReader(f))
    summarise(rows, archs, sizes, out, search_rows,
              operation_mass(out / "search" / "checkpoint.pth.tar"), command)
    print((out / "results.md").read_text())
    print(f"results in {out}")
    return out


if __name__ == "__main__":
    main(get_args_parser().parse_args())
