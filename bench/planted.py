"""Planted tasks: does the search find an answer known by construction? Several seeds each.

    .venv/bin/python bench/planted.py                          # every task, seeds 0-4
    .venv/bin/python bench/planted.py --tasks context --seeds 0 1
    .venv/bin/python bench/planted.py -- --arch-lr 0.01        # extra search flags, after --

Each run is the public command line: `train_autodeeplab.py --dataset planted_<task> --seed S`
with the dataset's own defaults (see config_utils/search_args.py) plus the extra flags, in a
subprocess with its log in its run folder under --run-dir. The decoded architecture of its
last checkpoint is checked against the task's planted answer (`PLANTED_ANSWER` and
`planted_answer_found` of dataloaders/datasets/planted_<task>.py).

One row per (task, seed, extra flags) goes to --csv: the decoded path and cell, whether the
planted answer is in it, the expected level per layer of a path drawn from the betas
(`mean_levels`) and the cell's most frequent operation (`top_operation`), how far alphas and
betas moved, the decode margins and the run's time. The tasks are each other's controls: the
context task should end on coarser levels than the others, and only the sparks task should
favour max_pool_3x3. Rows already in the CSV are skipped, so the same command continues an
interrupted series (on another machine too); each setting of extra flags has its own run
folders.

    .venv/bin/python bench/planted.py --controls --seeds 0 1   # no search: fixed architectures

    .venv/bin/python bench/planted.py --perturbation --tasks sparks -- --skip-dropout 0.5
    .venv/bin/python bench/planted.py --pruning --tasks sparks

`--perturbation` decodes each search's cell again, by DARTS-PT's perturbation
(`decode_autodeeplab.py --select perturbation`, engine/perturbation.py) instead of by the
alphas, and records in --perturbation-csv whether that cell holds the planted answer, beside
the alphas' verdict. `--pruning` does the same with `--select pruning` (engine/pruning.py),
into --pruning-csv, with the supernet's loss with only each cell. A search whose run folder
is missing (another machine) is run first.

    .venv/bin/python bench/planted.py --retrain alphas pruning --tasks sparks

`--retrain` retrains each search's network as each named selection decodes it, with train.py
and the task's retraining defaults (as the controls), seeded with the search's seed or with
each of --retrain-seeds, and records its val mIoU in --retrain-csv: whether a decode's planted
answer also retrains better.

`--controls` checks the tasks themselves: it retrains each task's CONTROLS, fixed
architectures with and without the planted choice, with train.py and the task's retraining
defaults, and records their val mIoU in --controls-csv. A task plants a choice only if the
architectures that make it score clearly higher.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import (append_row, cell_text, machine, read_rows,  # noqa: E402
                          resume_or_start, search_summary)
from dataloaders import dataset_info  # noqa: E402
from dataloaders.datasets import planted_context, planted_operation, planted_sparks  # noqa: E402
from engine.genotype_io import read_genotype, save_genotype  # noqa: E402
from engine.perturbation import shared_pairs  # noqa: E402
from modeling.genotypes import GENOTYPE_JSON, Genotype  # noqa: E402

TASKS = {"context": planted_context, "operation": planted_operation, "sparks": planted_sparks}
FIELDS = ("task", "seed", "flags", "found", "network_path", "cell", "mean_levels",
          "top_operation", "alpha_entropy",
          "alpha_uniform", "beta_entropy", "beta_uniform", "path_margin", "op_gap_mean",
          "op_gap_min", "val_miou", "seconds", "torch", "machine")
PERTURBATION_FIELDS = ("task", "seed", "flags", "found", "found_by_alphas", "cell",
                       "top_operation", "pairs_shared_with_alphas", "base_loss",
                       "rise_without_everywhere", "images", "seconds", "torch", "machine")
PRUNING_FIELDS = ("task", "seed", "flags", "found", "found_by_alphas", "cell", "top_operation",
                  "pairs_shared_with_alphas", "base_loss", "cell_loss", "alpha_cell_loss",
                  "evaluations", "images", "seconds", "torch", "machine")
RETRAIN_FIELDS = ("task", "seed", "flags", "selection", "retrain_seed", "found", "network_path",
                  "cell", "val_miou", "seconds", "torch", "machine")
SELECTIONS = ("alphas", "perturbation", "pruning")
CONTROL_FIELDS = ("task", "control", "seed", "flags", "network_path", "cell", "val_miou",
                  "seconds", "torch", "machine")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--csv", default=str(REPO / "docs" / "search_learning" / "planted.csv"),
                   help="results, one row per run; rows already there are skipped")
    p.add_argument("--run-dir", default=str(REPO / "run" / "planted"),
                   help="run folders, one per task and seed")
    p.add_argument("--controls", action="store_true",
                   help="instead of searching, retrain each task's control architectures "
                        "(CONTROLS: the planted choice made or not by hand) with train.py, to "
                        "measure how much the task needs it; rows to --controls-csv, and the "
                        "extra flags go to train.py")
    p.add_argument("--control-names", nargs="+", default=None, metavar="NAME",
                   help="with --controls: only these controls (names as in CONTROLS)")
    p.add_argument("--controls-csv",
                   default=str(REPO / "docs" / "search_learning" / "planted_controls.csv"),
                   help="results of --controls, one row per architecture and seed")
    p.add_argument("--perturbation", action="store_true",
                   help="instead of recording searches, decode each search's cell by "
                        "perturbation (decode_autodeeplab.py --select perturbation; the "
                        "search runs first if its folder is missing); rows to "
                        "--perturbation-csv")
    p.add_argument("--perturbation-csv",
                   default=str(REPO / "docs" / "search_learning" / "planted_perturbation.csv"),
                   help="results of --perturbation, one row per search")
    p.add_argument("--pruning", action="store_true",
                   help="instead of recording searches, decode each search's cell by pruning "
                        "(decode_autodeeplab.py --select pruning; the search runs first if its "
                        "folder is missing); rows to --pruning-csv")
    p.add_argument("--pruning-csv",
                   default=str(REPO / "docs" / "search_learning" / "planted_pruning.csv"),
                   help="results of --pruning, one row per search")
    p.add_argument("--retrain", nargs="+", choices=SELECTIONS, metavar="SELECTION",
                   help="instead of recording searches, retrain each search's network as "
                        "decoded by these selections (alphas, perturbation, pruning; a missing "
                        "search or decode runs first) with train.py and the task's retraining "
                        "defaults; rows to --retrain-csv")
    p.add_argument("--retrain-seeds", type=int, nargs="+", default=None, metavar="N",
                   help="with --retrain: the retrainings' seeds, each network once per seed "
                        "(default: the search's own seed)")
    p.add_argument("--train-flags", default="", metavar="FLAGS",
                   help="with --retrain: more train.py flags, as one string (the extra flags "
                        "after -- name the searches)")
    p.add_argument("--retrain-csv",
                   default=str(REPO / "docs" / "search_learning" / "planted_retrain.csv"),
                   help="results of --retrain, one row per search and selection")
    p.add_argument("extra", nargs="*", help="more train_autodeeplab.py flags (after --)")
    return p


def run_metrics(run: Path) -> tuple[float, float]:
    """(last val mIoU, seconds of all epochs or iterations) from a search's or a retraining's
    metrics.csv: the run's own time, also when a finished run is only reopened."""
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    values = [float(r["val_miou"]) for r in rows if r.get("val_miou") not in (None, "")]
    return (values[-1] if values else float("nan")), sum(float(r["seconds"]) for r in rows)


def run_script(script: str, argv: list[str], run: Path, extra: list[str], log: str) -> None:
    """Run entry script `script` into folder `run` (resuming its checkpoint if there is one),
    quietly; a failure ends the benchmark with the script's last words."""
    command = [sys.executable, str(REPO / script), *resume_or_start(run, argv), *extra]
    print(" ".join(command), flush=True)
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"{script} failed ({done.returncode}); see {run / log}:\n"
                 f"{done.stderr[-2000:]}")


def run_folder(run_dir: Path, name: str, extra: list[str]) -> Path:
    """`run_dir`/`name`, with the extra flags in the name: a folder that exists is resumed, so
    another setting must not find it."""
    flags = re.sub(r"[^A-Za-z0-9.]+", "_", " ".join(extra)).strip("_")
    return run_dir / (f"{name}-{flags}" if flags else name)


def run_task(task: str, seed: int, extra: list[str], run_dir: Path) -> dict:
    """Search planted task `task` with `seed`; the result row."""
    module = TASKS[task]
    run = run_folder(run_dir, f"{task}-seed{seed}", extra)
    run_script("train_autodeeplab.py", ["--dataset", module.INFO.name, "--seed", str(seed)],
               run, extra, "search.log")
    miou, seconds = run_metrics(run)
    genotype, summary = search_summary(run / "checkpoint.pth.tar")
    return {"task": task, "seed": seed, "flags": " ".join(extra),
            "found": module.planted_answer_found(genotype.network_path, genotype.cell),
            **summary, "val_miou": round(miou, 4), "seconds": round(seconds, 1),
            "torch": torch.__version__, "machine": machine()}


def run_selection(select: str, task: str, seed: int, extra: list[str], run_dir: Path):
    """Decode the cell of search (`task`, `seed`, `extra`) with `decode_autodeeplab.py
    --select select` into the run's `select`/ folder (the search runs first if its folder is
    missing). Returns (the row's common fields, the decoded genotype, the folder)."""
    module = TASKS[task]
    run = run_folder(run_dir, f"{task}-seed{seed}", extra)
    # Resuming a finished search trains nothing; a missing one is searched first.
    run_script("train_autodeeplab.py", ["--dataset", module.INFO.name, "--seed", str(seed)],
               run, extra, "search.log")
    out = run / select
    out.mkdir(exist_ok=True)
    command = [sys.executable, str(REPO / "decode_autodeeplab.py"), "--resume",
               str(run / "checkpoint.pth.tar"), "--select", select, "--out-dir",
               str(out), "--no-plot"]
    print(" ".join(command), flush=True)
    start = time.time()
    with (out / "decode.log").open("w") as log:
        done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"decode failed ({done.returncode}):\n{done.stderr[-2000:]}")
    seconds = time.time() - start
    genotype = read_genotype(out / GENOTYPE_JSON)
    by_alphas, _ = search_summary(run / "checkpoint.pth.tar")
    ops = Counter(op for block in genotype.cell for _, op in block).most_common()
    row = {"task": task, "seed": seed, "flags": " ".join(extra),
           "found": module.planted_answer_found(genotype.network_path, genotype.cell),
           "found_by_alphas": module.planted_answer_found(by_alphas.network_path,
                                                          by_alphas.cell),
           "cell": cell_text(genotype),
           "top_operation": " ".join(op for op, n in ops if n == ops[0][1]),
           "pairs_shared_with_alphas": shared_pairs(genotype.cell, by_alphas.cell),
           "seconds": round(seconds, 1), "torch": torch.__version__, "machine": machine()}
    return row, out


def run_perturbation(task: str, seed: int, extra: list[str], run_dir: Path) -> dict:
    """Decode the cell of search (`task`, `seed`, `extra`) by perturbation; the result row,
    with the alphas' decode of the same search beside it."""
    row, out = run_selection("perturbation", task, seed, extra, run_dir)
    scores = json.loads((out / "perturbation.json").read_text())
    rises = sorted(((v, name) for name, v in scores["everywhere"].items() if v is not None),
                   reverse=True)
    return {**row, "base_loss": round(scores["base_loss"], 4),
            "rise_without_everywhere": " ".join(f"{name}:{v:+.4f}" for v, name in rises),
            "images": scores["images"]}


def run_pruning(task: str, seed: int, extra: list[str], run_dir: Path) -> dict:
    """Decode the cell of search (`task`, `seed`, `extra`) by pruning; the result row, with
    the alphas' decode of the same search and its loss in the supernet beside it."""
    row, out = run_selection("pruning", task, seed, extra, run_dir)
    record = json.loads((out / "pruning.json").read_text())
    return {**row, **{key: round(record[key], 4) for key in
                      ("base_loss", "cell_loss", "alpha_cell_loss")},
            "evaluations": record["evaluations"], "images": record["images"]}


def series(args, out: Path, fields, run_one, brief) -> list[dict]:
    """Run `run_one(task, seed, extra, run_dir)` for every task and seed of `args` whose row
    (task, seed, extra flags) is not yet in CSV `out`, appending each row as it finishes and
    printing its `brief` fields; the rows of this setting, recorded before or now."""
    rows = read_rows(out)
    flags = " ".join(args.extra)
    done = {(r["task"], int(r["seed"]), r["flags"]) for r in rows}
    for task in args.tasks:
        dataset_info(TASKS[task].INFO.name)  # registered under that name
        for seed in args.seeds:
            if (task, seed, flags) in done:
                continue
            row = run_one(task, seed, args.extra, Path(args.run_dir))
            append_row(out, row, fields)
            rows.append({k: str(v) for k, v in row.items()})
            print(f"{task} seed {seed}: " + ", ".join(f"{k} {row[k]}" for k in brief),
                  flush=True)
    return [r for r in rows if r["flags"] == flags and int(r["seed"]) in args.seeds]


def selection(args, select: str, out: Path, fields, run_one) -> None:
    rows = series(args, out, fields, run_one,
                  ("found", "found_by_alphas", "top_operation", "seconds"))
    for task in args.tasks:
        mine = [r for r in rows if r["task"] == task]
        print(f"{task}: planted answer found by {select} in "
              f"{sum(r['found'] == 'True' for r in mine)} of {len(mine)} seeds, by the alphas "
              f"in {sum(r['found_by_alphas'] == 'True' for r in mine)}")


def retrained_fields(genotype: Genotype, run: Path) -> dict:
    """The result fields of `genotype` retrained in folder `run`: its architecture, the val
    mIoU of the last iteration, the time and the machine."""
    miou, seconds = run_metrics(run)
    return {"network_path": " ".join(map(str, genotype.network_path)),
            "cell": cell_text(genotype), "val_miou": round(miou, 4),
            "seconds": round(seconds, 1), "torch": torch.__version__, "machine": machine()}


def decoded_genotype(select: str, task: str, seed: int, extra: list[str], run_dir: Path) -> Path:
    """The genotype.json of search (`task`, `seed`, `extra`) decoded by `select`, in the run's
    `select`/ folder; the search and the decode run first if missing."""
    run = run_folder(run_dir, f"{task}-seed{seed}", extra)
    path = run / select / GENOTYPE_JSON
    if path.exists():
        return path
    if select != "alphas":
        run_selection(select, task, seed, extra, run_dir)
        return path
    run_script("train_autodeeplab.py", ["--dataset", TASKS[task].INFO.name, "--seed", str(seed)],
               run, extra, "search.log")
    path.parent.mkdir(exist_ok=True)
    save_genotype(search_summary(run / "checkpoint.pth.tar")[0], path)
    return path


def run_retrain(task: str, seed: int, extra: list[str], run_dir: Path, select: str,
                retrain_seed: int, train_flags: list[str]) -> dict:
    """Retrain search (`task`, `seed`, `extra`)'s network decoded by `select` with the
    dataset's retraining defaults, `train_flags` and `retrain_seed`; the result row (val mIoU
    of the last iteration)."""
    module = TASKS[task]
    path = decoded_genotype(select, task, seed, extra, run_dir)
    genotype = read_genotype(path)
    run = path.parent / f"retrain-seed{retrain_seed}"
    run_script("train.py", ["--dataset", module.INFO.name, "--genotype", str(path),
                            "--seed", str(retrain_seed)], run, train_flags, "train.log")
    return {"task": task, "seed": seed, "flags": " ".join(extra), "selection": select,
            "retrain_seed": retrain_seed,
            "found": module.planted_answer_found(genotype.network_path, genotype.cell),
            **retrained_fields(genotype, run)}


def retrain(args) -> None:
    out = Path(args.retrain_csv)
    rows = read_rows(out)
    flags = " ".join(args.extra)
    done = {(r["task"], int(r["seed"]), r["flags"], r["selection"], int(r["retrain_seed"]))
            for r in rows}
    for task in args.tasks:
        for select in args.retrain:
            for seed in args.seeds:
                for retrain_seed in args.retrain_seeds or [seed]:
                    if (task, seed, flags, select, retrain_seed) in done:
                        continue
                    row = run_retrain(task, seed, args.extra, Path(args.run_dir), select,
                                      retrain_seed, shlex.split(args.train_flags))
                    append_row(out, row, RETRAIN_FIELDS)
                    rows.append({k: str(v) for k, v in row.items()})
            mine = [r for r in rows if r["task"] == task and r["selection"] == select
                    and r["flags"] == flags and int(r["seed"]) in args.seeds
                    and (args.retrain_seeds is None or int(r["retrain_seed"])
                         in args.retrain_seeds)]
            mious = [float(r["val_miou"]) for r in mine]
            print(f"{task}, decoded by {select}: planted answer in "
                  f"{sum(r['found'] == 'True' for r in mine)} of {len(mine)}; retrained val mIoU "
                  + " ".join(f"{v:.3f}" for v in mious)
                  + f" (mean {sum(mious) / len(mious):.3f})", flush=True)


def run_control(task: str, name: str, seed: int, extra: list[str], run_dir: Path) -> dict:
    """Retrain control architecture `name` of `task` with the dataset's retraining defaults;
    the result row (val mIoU of the last iteration)."""
    module = TASKS[task]
    genotype = Genotype(*module.CONTROLS[name])
    run = run_folder(run_dir / "controls", f"{task}-{name.replace(' ', '_')}-seed{seed}", extra)
    run.mkdir(parents=True, exist_ok=True)
    save_genotype(genotype, run / "control.json")
    run_script("train.py", ["--dataset", module.INFO.name, "--genotype", str(run / "control.json"),
                            "--seed", str(seed)], run, extra, "train.log")
    return {"task": task, "control": name, "seed": seed, "flags": " ".join(extra),
            **retrained_fields(genotype, run)}


def controls(args) -> None:
    out = Path(args.controls_csv)
    rows = read_rows(out)
    flags = " ".join(args.extra)
    done = {(r["task"], r["control"], int(r["seed"]), r["flags"]) for r in rows}
    for task in args.tasks:
        unknown = set(args.control_names or ()) - set(TASKS[task].CONTROLS)
        if unknown:
            sys.exit(f"error: {task} has no control {', '.join(sorted(unknown))}; its controls "
                     f"are: {', '.join(TASKS[task].CONTROLS)}")
        for name in args.control_names or TASKS[task].CONTROLS:
            for seed in args.seeds:
                if (task, name, seed, flags) not in done:
                    row = run_control(task, name, seed, args.extra, Path(args.run_dir))
                    append_row(out, row, CONTROL_FIELDS)
                    rows.append({k: str(v) for k, v in row.items()})
            mine = [float(r["val_miou"]) for r in rows if r["task"] == task
                    and r["control"] == name and r["flags"] == flags
                    and int(r["seed"]) in args.seeds]
            print(f"{task}, {name}: val mIoU " + " ".join(f"{v:.3f}" for v in mine)
                  + f" (mean {sum(mine) / len(mine):.3f})", flush=True)


def main(args) -> None:
    modes = [f"--{mode}" for mode in ("controls", "perturbation", "pruning", "retrain")
             if getattr(args, mode)]
    if len(modes) > 1:
        sys.exit(f"error: {' and '.join(modes)} are separate series; give one")
    if args.controls:
        return controls(args)
    if args.perturbation:
        return selection(args, "perturbation", Path(args.perturbation_csv),
                         PERTURBATION_FIELDS, run_perturbation)
    if args.pruning:
        return selection(args, "pruning", Path(args.pruning_csv), PRUNING_FIELDS, run_pruning)
    if args.retrain:
        return retrain(args)
    rows = series(args, Path(args.csv), FIELDS, run_task,
                  ("found", "network_path", "alpha_entropy", "seconds"))
    for task in args.tasks:
        mine = [r for r in rows if r["task"] == task]
        found = sum(r["found"] == "True" for r in mine)
        print(f"{task}: planted answer ({TASKS[task].PLANTED_ANSWER}) found in {found} of "
              f"{len(mine)} seeds")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
