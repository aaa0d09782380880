"""Before/after of a whole benchmark: run one of this folder's benchmark scripts at a git
revision (A) and in the working tree (B), alternating processes, and report B/A.

    .venv/bin/python bench/revisions_ab.py --against 934bafb --pairs 3 \
        search_step.py --crops 64 192
    .venv/bin/python bench/revisions_ab.py --against 934bafb --pairs 3 retrain_step.py

For changes that `bench/search_ab.py` cannot compare in one process (the supernet's or the
retrained network's structure, their parameters, anything outside the search cell). The
revision is checked out into a temporary git worktree, removed afterwards; both sides run with
this working tree's Python. Runs alternate ABBA..., so a slow minute of this shared machine
costs both sides alike. Prints one JSON object per crop: every run's figures and B/A of the
medians over runs of the step times, images per second and peak memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Figures compared, as (key, sub-key or None) of the benchmark scripts' JSON lines.
FIGURES = (("weight_step_s", "median"), ("arch_step_s", "median"), ("step_s", "median"),
           ("images_per_s", None), ("peak_memory_gib", None),
           ("forward_backward_gflop", None))


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--against", required=True, metavar="REV",
                   help="git revision measured as A (the working tree is B)")
    p.add_argument("--pairs", type=int, default=3, help="runs of each side")
    p.add_argument("script", help="benchmark script in bench/, e.g. search_step.py")
    p.add_argument("script_args", nargs=argparse.REMAINDER,
                   help="arguments for the script (the same on both sides)")
    return p


def run(tree: Path, script: str, script_args: list[str]) -> list[dict]:
    """The JSON lines that `script` prints when run in `tree`."""
    out = subprocess.run([sys.executable, str(tree / "bench" / script), *script_args],
                         cwd=tree, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: bench/{script} failed in {tree}: "
                 f"{(out.stderr.strip().splitlines() or ['(no output)'])[-1]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def figure(row: dict, key: str, sub: str | None):
    value = row.get(key)
    return value.get(sub) if isinstance(value, dict) and sub else value


def compare(a_runs: list[list[dict]], b_runs: list[list[dict]]) -> list[dict]:
    """Per crop: both sides' runs and B/A of the medians of every figure they both have."""
    results = []
    for index, row in enumerate(a_runs[0]):
        a = [rows[index] for rows in a_runs]
        b = [rows[index] for rows in b_runs]
        ratios = {}
        for key, sub in FIGURES:
            a_values = [figure(r, key, sub) for r in a]
            b_values = [figure(r, key, sub) for r in b]
            if None in a_values or None in b_values:
                continue
            ratios[key] = round(statistics.median(b_values) / statistics.median(a_values), 3)
        results.append({"crop": row.get("crop"), "b_over_a": ratios,
                        "a": [{key: figure(r, key, sub) for key, sub in FIGURES} for r in a],
                        "b": [{key: figure(r, key, sub) for key, sub in FIGURES} for r in b]})
    return results


def main(args) -> None:
    if args.script_args[:1] == ["--"]:
        args.script_args = args.script_args[1:]
    revision = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=REPO,
                              capture_output=True, text=True)
    if revision.returncode != 0:
        sys.exit(f"error: --against {args.against}: not a revision of this repository")
    with tempfile.TemporaryDirectory(prefix="revisions_ab_") as tmp:
        tree = Path(tmp) / "a"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree),
                        args.against], cwd=REPO, check=True)
        try:
            a_runs, b_runs = [], []
            for i in range(args.pairs):
                order = [(tree, a_runs), (REPO, b_runs)]
                for side, runs in order if i % 2 == 0 else order[::-1]:  # ABBA...
                    runs.append(run(side, args.script, args.script_args))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                           check=False)
    for result in compare(a_runs, b_runs):
        print(json.dumps({"against": revision.stdout.strip(), "script": args.script,
                          "args": args.script_args, "pairs": args.pairs, **result}))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
