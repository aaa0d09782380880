"""Evidence on real data: networks searched on CamVid against architectures drawn uniformly from
the same space and the paper's architecture, each retrained at the same budget and evaluated
on the val split.

    .venv/bin/python bench/camvid.py                         # CPU protocol, hours on 2 cores
    .venv/bin/python bench/camvid.py --protocol gpu --device cuda
    .venv/bin/python bench/camvid.py --protocol smoke        # a few iterations (the test suite)

With `--perturbation`, each search is also decoded with `decode_autodeeplab.py --select
perturbation` (DARTS-PT's selection of the cell by the rise of the supernet's validation loss;
same network path) on the protocol's first `perturbation_images` val images, and that network
is retrained too: group "searched-perturbation", arch `searched-pt-sK`. `--pruning` does the
same with `--select pruning` (engine/pruning.py): group "searched-pruning", arch
`searched-pruning-sK`. A search recorded on another machine is searched again here to be
decoded.

Stages: retrain the paper's architecture; then `--num-random` random architectures and, for
each of `--search-seeds`, a search, its decode and the retraining of the searched network,
alternating (6 random and 3 seeds: r1 r2 s0 r3 r4 s1 r5 r6 s2), so that a series stopped
part-way compares both groups. Random and paper rows do not depend on the search, so a change
to the search leaves them valid.

Every stage is the public command line (train_autodeeplab.py, decode_autodeeplab.py, train.py),
run in a subprocess with its log in its run folder under --out-dir; an interrupted stage
resumes from its checkpoint. Each finished stage appends its row to a CSV in --results-dir
(under docs/camvid for the real protocols, to be committed as they come), together with the
genotype it trained, and rows already there are skipped: the same command continues the
comparison, on another machine too. After every stage `results.md` and the plots are rewritten
from all rows recorded so far.

--results-dir holds: `results.csv` (one row per retrained network: val mIoU, per-class IoU,
the val mIoU at every evaluation of the retraining, parameters, Multi-Adds, time, path, cell),
`search.csv` (one row per search: how far the architecture moved, decode margins),
`search-sK.csv` (a search's per-epoch metrics), `genotypes/` (every architecture trained),
`results.md`, `curves.png` (val mIoU during retraining), `miou_vs_multiadds.png` and
`search.png` (alpha and beta entropy per search epoch).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import (append_row, cell_text, machine, read_rows,  # noqa: E402
                          resume_or_start, search_summary)
from config_utils.search_args import SMALL_BUDGET_ARCH_LR  # noqa: E402
from dataloaders import dataset_info  # noqa: E402
from engine.genotype_io import read_genotype, save_genotype  # noqa: E402
from modeling.genotypes import GENOTYPES, Genotype, random_genotype  # noqa: E402
from modeling.retrain_net import AutoDeepLab, RetrainConfig  # noqa: E402
from utils.flops import count_parameters, multi_adds  # noqa: E402

DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "camvid"
CLASS_NAMES = dataset_info("camvid").class_names
# Random architectures are drawn in sequence from this generator, so random-K is the same
# architecture in every series; its genotype file is written on first use and read after.
RANDOM_ARCH_SEED = 1000

# Each protocol: the flags of the search and of every retraining, and the evaluation size used
# for Multi-Adds (the val images after --resize). The architecture warm-up (--alpha-epoch) is
# the paper's half of the search (20 of 40 epochs), scaled with the number of epochs.
PROTOCOLS = {
    # 2-core CPU: images at a third of their size (120 x 160). Search: F = 4 supernet, 8 epochs
    # of 45 steps (~45 min), the small-budget architecture learning rate (180 architecture
    # steps; at the paper's 3e-3 the alphas move by thousandths). Retraining: F = 8, 1200
    # iterations (~16 min per network), val evaluated every 300 to show where the ranking
    # settles (docs/camvid/README.md).
    "cpu": dict(
        search=["--resize", "120", "--crop-size", "96", "--batch-size", "4",
                "--filter-multiplier", "4", "--block-multiplier", "5", "--steps", "5",
                "--num-layers", "12", "--epochs", "8", "--alpha-epoch", "4", "--workers", "1",
                "--arch-lr", str(SMALL_BUDGET_ARCH_LR)],
        retrain=["--resize", "120", "--crop-size", "96", "--batch-size", "8",
                 "--filter-multiplier", "8", "--iters", "1200", "--eval-interval", "300",
                 "--warmup-iters", "50", "--lr", "0.05", "--workers", "1"],
        eval_size=(120, 160), perturbation_images=24),
    # One GPU: full 360 x 480 resolution, the paper's search settings (40 epochs, architecture
    # from epoch 20, F = 8, batch 2, crop 321), a long retraining at the paper's S width.
    "gpu": dict(
        search=["--crop-size", "321", "--batch-size", "2", "--filter-multiplier", "8",
                "--block-multiplier", "5", "--steps", "5", "--num-layers", "12",
                "--epochs", "40", "--alpha-epoch", "20", "--workers", "4"],
        retrain=["--crop-size", "321", "--batch-size", "8", "--filter-multiplier", "20",
                 "--iters", "20000", "--eval-interval", "2000", "--warmup-iters", "1000",
                 "--lr", "0.05", "--workers", "4"],
        eval_size=(360, 480), perturbation_images=None),
    # The test suite's smoke run: a few iterations of everything.
    "smoke": dict(
        search=["--resize", "48", "--crop-size", "32", "--batch-size", "2", "--max-samples", "8",
                "--filter-multiplier", "2", "--block-multiplier", "2", "--steps", "2",
                "--num-layers", "3", "--epochs", "2", "--alpha-epoch", "1", "--workers", "0"],
        retrain=["--resize", "48", "--crop-size", "32", "--batch-size", "2", "--max-samples", "8",
                 "--filter-multiplier", "2", "--iters", "4", "--eval-interval", "2",
                 "--warmup-iters", "1", "--workers", "0"],
        eval_size=(48, 64), perturbation_images=4),
}
GROUPS = ("searched", "searched-perturbation", "searched-pruning", "random", "paper")
RESULT_FIELDS = ("arch", "group", "search_seed", "seed", "miou", "pixel_acc",
                 *(f"iou_{name}" for name in CLASS_NAMES), "miou_curve", "params_m",
                 "multi_adds_g", "train_s", "network_path", "cell", "retrain_flags", "machine")
SEARCH_FIELDS = ("search_seed", "network_path", "cell", "mean_levels", "top_operation",
                 "alpha_entropy", "alpha_uniform", "beta_entropy", "beta_uniform",
                 "path_margin", "op_gap_mean", "op_gap_min", "val_miou", "seconds",
                 "search_flags", "machine")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--protocol", default="cpu", choices=sorted(PROTOCOLS),
                   help="budget: cpu (2 cores, hours), gpu (full resolution), smoke (seconds)")
    p.add_argument("--data-root", default=None,
                   help=f"CamVid in the SegNet layout (default: $AUTODEEPLAB_CAMVID, else "
                        f"{DEFAULT_ROOT})")
    p.add_argument("--out-dir", default=None,
                   help="run folders (default: run/camvid-PROTOCOL)")
    p.add_argument("--results-dir", default=None,
                   help="result rows, genotypes, table and plots (default: docs/camvid for "
                        "cpu, docs/camvid/gpu for gpu, --out-dir for smoke)")
    p.add_argument("--search-seeds", type=int, nargs="*", default=[0, 1, 2],
                   help="one search (and its A/B split) per seed")
    p.add_argument("--num-random", type=int, default=6,
                   help="architectures drawn uniformly from the search space")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="retraining seeds; every architecture is retrained once per seed")
    p.add_argument("--perturbation", action="store_true",
                   help="also decode each search's cell by perturbation (DARTS-PT) and "
                        "retrain that network (group searched-perturbation)")
    p.add_argument("--pruning", action="store_true",
                   help="also decode each search's cell by pruning (engine/pruning.py) and "
                        "retrain that network (group searched-pruning)")
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


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def random_architectures(count: int, protocol: dict, results: Path) -> dict[str, Genotype]:
    """random-1 ... random-`count`, with the search's number of layers and blocks."""
    num_layers = int(flag_value(protocol["search"], "--num-layers"))
    steps = int(flag_value(protocol["search"], "--steps"))
    rng = np.random.default_rng(RANDOM_ARCH_SEED)
    archs = {}
    for i in range(1, count + 1):
        drawn = random_genotype(num_layers, steps, rng)
        path = results / "genotypes" / f"random-{i}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_genotype(drawn, path)
        archs[f"random-{i}"] = read_genotype(path)
    return archs


def searched_supernet(protocol, data, out: Path, seed: int) -> Path:
    """The run folder of the search with `seed`, searching first if it has not finished here
    (a recorded series continued on another machine searches again to decode it again)."""
    run_dir = out / f"search-s{seed}"
    if not (run_dir / "search.done").exists():
        argv = [*data, *protocol["search"], "--seed", str(seed)]
        run_stage(f"search seed {seed}", "train_autodeeplab.py", resume_or_start(run_dir, argv),
                  out / "logs" / f"search-s{seed}.log")
        (run_dir / "search.done").touch()
    return run_dir


def search(protocol, data, out: Path, results: Path, seed: int) -> Genotype:
    """Search with `seed` and decode; the genotype is kept in --results-dir and the search's
    summary row in search.csv. A recorded genotype is used as it is."""
    genotype_path = results / "genotypes" / f"searched-s{seed}.json"
    if genotype_path.exists():
        return read_genotype(genotype_path)
    run_dir = searched_supernet(protocol, data, out, seed)
    run_stage(f"decode seed {seed}", "decode_autodeeplab.py",
              ["--resume", str(run_dir / "checkpoint.pth.tar")],
              out / "logs" / f"search-s{seed}.log")
    genotype, summary = search_summary(run_dir / "checkpoint.pth.tar")
    epochs = read_rows(run_dir / "metrics.csv")
    shutil.copyfile(run_dir / "metrics.csv", results / f"search-s{seed}.csv")
    shutil.copyfile(run_dir / "architecture.png", results / "genotypes" /
                    f"searched-s{seed}.png")
    miou = [float(r["val_miou"]) for r in epochs if r["val_miou"] not in ("", "nan")]
    append_row(results / "search.csv", {
        "search_seed": seed, **summary, "val_miou": round(miou[-1], 4) if miou else "",
        "seconds": round(sum(float(r["seconds"]) for r in epochs), 1),
        "search_flags": " ".join(protocol["search"]), "machine": machine()}, SEARCH_FIELDS)
    save_genotype(genotype, genotype_path)  # last: its presence marks the search as recorded
    return genotype


# The cell selections other than the alphas': decode_autodeeplab.py --select NAME, the arch
# name of the network retrained, and its group.
SELECTIONS = {"perturbation": ("searched-pt-s{seed}", "searched-perturbation"),
              "pruning": ("searched-pruning-s{seed}", "searched-pruning")}


def selected_genotype(select: str, protocol, data, out: Path, results: Path,
                      seed: int) -> Genotype:
    """Search `seed`'s cell chosen by `select` (the path is the search's); kept in
    --results-dir with the selection's record (`select`.json). A recorded genotype is used as
    it is."""
    name = SELECTIONS[select][0].format(seed=seed)
    genotype_path = results / "genotypes" / f"{name}.json"
    if genotype_path.exists():
        return read_genotype(genotype_path)
    run_dir = searched_supernet(protocol, data, out, seed)
    decoded = run_dir / select
    argv = ["--resume", str(run_dir / "checkpoint.pth.tar"), "--select", select,
            "--out-dir", str(decoded), "--no-plot", "--data-root", flag_value(data, "--data-root")]
    if protocol["perturbation_images"]:
        argv += ["--max-images", str(protocol["perturbation_images"])]
    if "--device" in data:
        argv += ["--device", flag_value(data, "--device")]
    run_stage(f"decode seed {seed} by {select}", "decode_autodeeplab.py", argv,
              out / "logs" / f"search-s{seed}.log")
    shutil.copyfile(decoded / f"{select}.json",
                    results / "genotypes" / f"{name}.{select}.json")
    genotype = read_genotype(decoded / "genotype.json")
    save_genotype(genotype, genotype_path)  # last: its presence marks the decode as recorded
    return genotype


def model_size(genotype: Genotype, filter_multiplier: int, eval_size) -> tuple[float, float]:
    """(parameters in millions, Multi-Adds in billions at the evaluation size)."""
    config = RetrainConfig(num_classes=len(CLASS_NAMES), genotype=genotype,
                           filter_multiplier=filter_multiplier, block_multiplier=genotype.steps)
    with torch.device("meta"):
        model = AutoDeepLab(config)
    return count_parameters(model) / 1e6, multi_adds(model, tuple(eval_size)) / 1e9


def retrain(protocol, data, out: Path, name: str, group: str, search_seed, genotype: Genotype,
            seed: int) -> dict:
    """Retrain `genotype` at the protocol's budget and evaluate its last iteration on val (no
    selection on the val split); the result row."""
    run_dir = out / "retrain" / f"{name}-seed{seed}"
    log = out / "logs" / f"retrain-{name}-seed{seed}.log"
    genotype_path = run_dir.parent / f"{name}.json"
    if not genotype_path.exists():
        genotype_path.parent.mkdir(parents=True, exist_ok=True)
        save_genotype(genotype, genotype_path)
    if not (run_dir / "eval_val.json").exists():
        if not (run_dir / "train.done").exists():
            argv = [*data, *protocol["retrain"], "--genotype", str(genotype_path),
                    "--seed", str(seed)]
            run_stage(f"retrain {name} seed {seed}", "train.py", resume_or_start(run_dir, argv),
                      log)
            (run_dir / "train.done").touch()
        run_stage(f"evaluate {name} seed {seed}", "train.py",
                  ["--resume", str(run_dir / "checkpoint.pth.tar"), "--eval-only"], log)
    metrics = json.loads((run_dir / "eval_val.json").read_text())
    steps = read_rows(run_dir / "metrics.csv")
    curve = " ".join(f"{r['step']}:{float(r['val_miou']):.4f}" for r in steps
                     if r["val_miou"] not in ("", "nan"))
    params, madds = model_size(genotype, int(flag_value(protocol["retrain"],
                                                        "--filter-multiplier")),
                               protocol["eval_size"])
    return {"arch": name, "group": group, "search_seed": search_seed, "seed": seed,
            "miou": round(metrics["miou"], 5), "pixel_acc": round(metrics["pixel_acc"], 5),
            **{f"iou_{k}": round(v, 5) for k, v in metrics["per_class_iou"].items()},
            "miou_curve": curve, "params_m": round(params, 3), "multi_adds_g": round(madds, 3),
            "train_s": round(sum(float(r["seconds"]) for r in steps), 1),
            "network_path": " ".join(map(str, genotype.network_path)),
            "cell": cell_text(genotype), "retrain_flags": " ".join(protocol["retrain"]),
            "machine": machine()}


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Rank agreement of two scorings of the same items (tau-a): 1 same order, -1 reversed."""
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    if not pairs:
        return float("nan")
    score = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in pairs)
    return float(score / len(pairs))


def parse_curve(text: str) -> dict[int, float]:
    return {int(step): float(v) for step, v in (item.split(":") for item in text.split())}


def mean_spread(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def verdict(rows: list[dict]) -> list[str]:
    """Group means and whether the searched networks beat the random ones by more than the
    spread of either group."""
    groups = {g: [float(r["miou"]) for r in rows if r["group"] == g] for g in GROUPS}
    lines = ["| group | networks x seeds | val mIoU (%) |", "|---|---|---|"]
    lines += [f"| {g} | {len(v)} | {mean_spread(v)} |" for g, v in groups.items() if v]
    random = groups["random"]
    for group, name in (("searched", "Searched"),
                        ("searched-perturbation", "Searched, cell by perturbation,"),
                        ("searched-pruning", "Searched, cell by pruning,")):
        searched = groups[group]
        if len(searched) >= 2 and len(random) >= 2:
            gap = statistics.mean(searched) - statistics.mean(random)
            spread = max(statistics.stdev(searched), statistics.stdev(random))
            beats = "yes" if gap > spread else "no"
            lines += ["", f"{name} minus random: {100 * gap:+.1f} points; the larger "
                          f"standard deviation of the two groups is {100 * spread:.1f}. "
                          f"{name.rstrip(',')} beats random by more than the spread: "
                          f"**{beats}**."]
        elif group == "searched":
            lines += ["", "Searched against random: not yet decided (needs at least two rows "
                          "in each group)."]
    return lines


def ranking_stability(rows: list[dict]) -> list[str]:
    """How much the ranking of the networks still changes late in retraining: Kendall's tau
    between the val mIoU at each evaluation and at the last, over networks with a full curve."""
    curves = [parse_curve(r["miou_curve"]) for r in rows if r["miou_curve"]]
    if len(curves) < 3:
        return []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if len(steps) < 2:
        return []
    last = [c[steps[-1]] for c in curves]
    cells = [f"{kendall_tau([c[s] for c in curves], last):.2f}" for s in steps]
    return ["", f"Ranking of the {len(curves)} networks at each evaluation against the last "
                "(Kendall's tau; 1 means the order is already final):", "",
            "| iteration | " + " | ".join(map(str, steps)) + " |",
            "|---|" + "---|" * len(steps), "| tau | " + " | ".join(cells) + " |"]


def summarise(results: Path, command: str) -> None:
    """results.md and the plots, from every row recorded so far."""
    rows = read_rows(results / "results.csv")
    searches = read_rows(results / "search.csv")
    if not rows:
        return
    lines = [f"Command: `{command}`", "", "Retraining flags: `" + rows[0]["retrain_flags"] + "`",
             "", f"Machine: {rows[-1]['machine']}", "", *verdict(rows), *ranking_stability(rows),
             "", "Every network (val mIoU of the last iteration):", "",
             "| architecture | seed | val mIoU | pixel acc. | params (M) | Multi-Adds (G) | "
             "train time (s) | network path |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['seed']} | {100 * float(r['miou']):.1f} | "
                     f"{100 * float(r['pixel_acc']):.1f} | {float(r['params_m']):.2f} | "
                     f"{float(r['multi_adds_g']):.2f} | {float(r['train_s']):.0f} | "
                     f"{r['network_path']} |")
    lines += ["", "Per-class IoU (%):", "",
              "| architecture | seed | " + " | ".join(CLASS_NAMES) + " |",
              "|---|---|" + "---|" * len(CLASS_NAMES)]
    for r in rows:
        cells = [f"{100 * float(r['iou_' + n]):.1f}" if r["iou_" + n] not in ("", "nan")
                 else "n/a" for n in CLASS_NAMES]
        lines.append(f"| {r['arch']} | {r['seed']} | " + " | ".join(cells) + " |")
    lines += ["", "Cells (operation(input) per block):", ""]
    for name in dict.fromkeys(r["arch"] for r in rows):
        blocks = read_genotype(results / "genotypes" / f"{name}.json").cell
        lines.append(f"- {name}: " + "; ".join(" + ".join(f"{op}({i})" for i, op in block)
                                             for block in blocks))
    if searches:
        lines += ["", "Searches (how far the architecture moved from uniform):", "",
                  "| seed | alpha entropy (uniform) | beta entropy (uniform) | path margin | "
                  "op gap (mean) | top operation | path | time (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in searches:
            lines.append(f"| {s['search_seed']} | {float(s['alpha_entropy']):.3f} "
                         f"({float(s['alpha_uniform']):.3f}) | {float(s['beta_entropy']):.3f} "
                         f"({float(s['beta_uniform']):.3f}) | {s['path_margin']} | "
                         f"{s['op_gap_mean']} | {s['top_operation']} | {s['network_path']} | "
                         f"{float(s['seconds']):.0f} |")
    (results / "results.md").write_text("\n".join(lines) + "\n")
    plot(rows, searches, results)


def plot(rows: list[dict], searches: list[dict], results: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(GROUPS, ("tab:red", "tab:orange", "tab:green", "tab:grey", "tab:blue"),
                       strict=True))
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        curve = parse_curve(r["miou_curve"]) if r["miou_curve"] else {}
        if curve:
            ax.plot(list(curve), [100 * v for v in curve.values()], marker="o", ms=3,
                    color=colours[r["group"]], alpha=0.8, lw=2 if r["group"] != "random" else 1)
    for group, colour in colours.items():
        if any(r["group"] == group for r in rows):
            ax.plot([], [], color=colour, label=group)
    ax.set(xlabel="retraining iteration", ylabel="val mIoU (%)",
           title="retraining on CamVid, equal budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(results / "curves.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for group, colour in colours.items():
        mine = [r for r in rows if r["group"] == group]
        ax.scatter([float(r["multi_adds_g"]) for r in mine],
                   [100 * float(r["miou"]) for r in mine], color=colour, label=group,
                   marker="*" if group.startswith("searched") else "o",
                   s=120 if group.startswith("searched") else 40)
    ax.set(xlabel="Multi-Adds (G) at the evaluation size", ylabel="val mIoU (%)",
           title="retrained on CamVid, equal budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results / "miou_vs_multiadds.png", dpi=100)
    plt.close(fig)

    if not searches:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for s in searches:
        epochs = read_rows(results / f"search-s{s['search_seed']}.csv")
        x = [int(e["epoch"]) for e in epochs]
        ax1.plot(x, [float(e["alpha_entropy"]) for e in epochs], marker="o",
                 label=f"seed {s['search_seed']}")
        ax2.plot(x, [float(e["beta_entropy"]) for e in epochs], marker="s",
                 label=f"seed {s['search_seed']}")
    ax1.axhline(float(searches[0]["alpha_uniform"]), color="k", ls=":", label="uniform")
    ax2.axhline(float(searches[0]["beta_uniform"]), color="k", ls=":", label="uniform")
    ax1.set(xlabel="search epoch", ylabel="mean alpha entropy (nats)", title="cell (alphas)")
    ax2.set(xlabel="search epoch", ylabel="mean beta entropy (nats)", title="path (betas)")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results / "search.png", dpi=100)
    plt.close(fig)


def main(args) -> Path:
    protocol = PROTOCOLS[args.protocol]
    root = Path(args.data_root or os.environ.get("AUTODEEPLAB_CAMVID") or DEFAULT_ROOT)
    if not (root / "train").is_dir() or not (root / "trainannot").is_dir():
        sys.exit(f"error: CamVid not found at {root} (needs train/ and trainannot/); give "
                 f"--data-root DIR or set AUTODEEPLAB_CAMVID")
    out = Path(args.out_dir or REPO / "run" / f"camvid-{args.protocol}")
    default_results = {"cpu": REPO / "docs" / "camvid", "gpu": REPO / "docs" / "camvid" / "gpu",
                       "smoke": out}
    results = Path(args.results_dir or default_results[args.protocol])
    out.mkdir(parents=True, exist_ok=True)
    (results / "genotypes").mkdir(parents=True, exist_ok=True)
    data = ["--dataset", "camvid", "--data-root", str(root)]
    if args.device:
        data += ["--device", args.device]
    command = " ".join(["python", "bench/camvid.py", *sys.argv[1:]])
    flags = " ".join(protocol["retrain"])
    done = {(r["arch"], int(r["seed"])) for r in read_rows(results / "results.csv")
            if r["retrain_flags"] == flags}

    def stage(name: str, group: str, search_seed, genotype: Genotype) -> None:
        path = results / "genotypes" / f"{name}.json"
        if not path.exists():
            save_genotype(genotype, path)
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            row = retrain(protocol, data, out, name, group, search_seed, genotype, seed)
            append_row(results / "results.csv", row, RESULT_FIELDS)
            done.add((name, seed))
            summarise(results, command)
            print(f"{name} seed {seed}: val mIoU {100 * row['miou']:.1f}", flush=True)

    stage("paper", "paper", "", GENOTYPES["autodeeplab"])
    # Random and searched stages alternate (r1 r2 s0 r3 r4 s1 ...), so that a series stopped
    # part-way compares both groups.
    randoms = list(random_architectures(args.num_random, protocol, results).items())
    per_search = max(1, math.ceil(len(randoms) / max(1, len(args.search_seeds))))
    chunks = [randoms[i:i + per_search] for i in range(0, len(randoms), per_search)]
    for turn in range(max(len(chunks), len(args.search_seeds))):
        for name, genotype in chunks[turn] if turn < len(chunks) else ():
            stage(name, "random", "", genotype)
        if turn < len(args.search_seeds):
            seed = args.search_seeds[turn]
            stage(f"searched-s{seed}", "searched", seed,
                  search(protocol, data, out, results, seed))
            for select in [name for name in SELECTIONS if getattr(args, name)]:
                name, group = SELECTIONS[select]
                stage(name.format(seed=seed), group, seed,
                      selected_genotype(select, protocol, data, out, results, seed))
    summarise(results, command)
    print((results / "results.md").read_text())
    print(f"results in {results}")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
