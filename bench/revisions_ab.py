"""Before/after of the whole search or retraining step in one process: the networks of a git
revision (A) and of the working tree (B), stepped alternately.

    .venv/bin/python bench/revisions_ab.py search --against 934bafb --crops 64 192 --pairs 8
    .venv/bin/python bench/revisions_ab.py retrain --against 934bafb --crops 321 --pairs 8

Other flags go to the step benchmark (`--filter-multiplier 4 --num-layers 6`, `--model
autodeeplab-m`, ...; see its --help).

For changes that `bench/search_ab.py` cannot compare, which swaps only the search cell's
methods: the supernet's or the retrained network's structure and parameters, anything outside
the search cell. The revision is checked out into a temporary git worktree. Each side's
network is built by this working tree's `bench/search_step.py` or `bench/retrain_step.py`
(`build`, copied into the revision's tree), imported against that side's packages, so both
sides get the same configuration, batch and optimiser, each network built by its own code. Steps then alternate ABBA...
(`bench/step_timing.alternate`), so a slow minute of this shared machine costs both alike.
Prints one JSON object per crop: each side's median and minimum seconds per step and B/A.
Peak memory needs a process per side: run the step benchmark itself at each revision.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.step_timing import alternate  # noqa: E402
from utils.allocator import allocator_in_use, preload_fast_allocator  # noqa: E402
from utils.onednn import size_primitive_cache  # noqa: E402

# The project's top-level packages: purged from sys.modules before loading the other side.
PACKAGES = ("modeling", "engine", "utils", "dataloaders", "config_utils", "bench")
BENCHMARKS = {"search": "search_step.py", "retrain": "retrain_step.py"}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("step", choices=sorted(BENCHMARKS), help="which step to compare")
    p.add_argument("--against", required=True, metavar="REV",
                   help="git revision measured as A (the working tree is B)")
    p.add_argument("--crops", type=int, nargs="+", default=None,
                   help="crop sizes (default: the step benchmark's)")
    p.add_argument("--pairs", type=int, default=8, help="timed steps per version and kind")
    return p


def load_side(tree: Path, benchmark: str):
    """The benchmark module in `tree`, imported against `tree`'s packages."""
    for name in list(sys.modules):
        if name.split(".")[0] in PACKAGES:
            del sys.modules[name]
    sys.path[0] = str(tree)
    spec = importlib.util.spec_from_file_location(f"bench_{tree.name}",
                                                  tree / "bench" / benchmark)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(args, bench_flags: list[str]) -> None:
    revision = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=REPO,
                              capture_output=True, text=True)
    if revision.returncode != 0:
        sys.exit(f"error: --against {args.against}: not a revision of this repository")
    benchmark = BENCHMARKS[args.step]
    with tempfile.TemporaryDirectory(prefix="revisions_ab_") as tmp:
        tree = Path(tmp) / "a"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree),
                        args.against], cwd=REPO, check=True)
        try:
            # Both sides measure with this working tree's benchmarks (A's may lack `build`).
            shutil.copytree(REPO / "bench", tree / "bench", dirs_exist_ok=True)
            modules = {"A": load_side(tree, benchmark), "B": load_side(REPO, benchmark)}
            bench_args = modules["B"].get_args_parser().parse_args(
                bench_flags + ([] if args.crops is None else ["--crops", *map(str, args.crops)]))
            for crop in bench_args.crops:
                sides, params = {}, {}
                for version, module in modules.items():
                    built = module.build(bench_args, crop)
                    params[version] = round(sum(p.numel() for p in built[0].parameters()) / 1e6,
                                            3)
                    steps = ({"weight": built[-2], "arch": built[-1]} if args.step == "search"
                             else {"retrain": built[-1]})
                    sides[version] = (lambda: None, steps)
                result = {"step": args.step, "crop": crop, "against": revision.stdout.strip(),
                          "pairs": args.pairs, "batch": bench_args.batch_size,
                          "threads": torch.get_num_threads(), "allocator": allocator_in_use(),
                          "params_m": params}
                result.update(alternate(sides, args.pairs))
                print(json.dumps(result), flush=True)
                del sides
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                           check=False)


if __name__ == "__main__":
    preload_fast_allocator()  # as the entry scripts: tcmalloc or jemalloc where installed
    size_primitive_cache()  # as the entry scripts, before the first convolution
    main(*get_args_parser().parse_known_args())
