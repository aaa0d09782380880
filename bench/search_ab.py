"""Before/after of the search cell in one process: alternate search steps between
modeling/search_cell.py at a git revision (A) and the working tree (B).

    .venv/bin/python bench/search_ab.py --against HEAD~3 --crops 64 192 --pairs 10

These machines are shared: a step's time moves by 10-20 % from one minute to the next, more
than most single changes. Here both versions run in the same process on the same model,
alternately (ABBA...), so a slow minute costs both alike, and the ratio B/A is what to read.
The revision's cell classes lend their methods to the current ones, so both revisions must
give the supernet the same parameters and buffers, and their cells take the same arguments
(revisions before 2b6ee2e, whose cells read the alphas unarranged, or before bf265f1, with a
batch norm per type, do not: compare those with bench/revisions_ab.py). Prints one JSON
object per crop: median and minimum seconds per weight and architecture step for A and B,
and B/A of the medians, of the process CPU time and of the minima.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import modeling.search_cell as current  # noqa: E402
from bench import search_step  # noqa: E402
from bench.step_timing import alternate  # noqa: E402
from utils.allocator import allocator_in_use, preload_fast_allocator  # noqa: E402
from utils.onednn import size_primitive_cache  # noqa: E402

CELL_FILE = "modeling/search_cell.py"


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--against", default="HEAD", help="git revision of version A")
    p.add_argument("--crops", type=int, nargs="+", default=[64, 192], help="crop sizes")
    p.add_argument("--pairs", type=int, default=10, help="timed steps per version and kind")
    p.add_argument("--batch-size", type=int, default=2, help="images per step")
    p.add_argument("--filter-multiplier", type=int, default=8, help="F")
    p.add_argument("--num-layers", type=int, default=12, help="L")
    return p


def supernet_args(args) -> argparse.Namespace:
    """bench/search_step.py's configuration (its defaults: B=5, 19 classes, CPU), with the
    flags given here."""
    full = search_step.get_args_parser().parse_args([])
    for key in ("batch_size", "filter_multiplier", "num_layers"):
        setattr(full, key, getattr(args, key))
    return full


def load_revision(rev: str):
    """modeling/search_cell.py as it was at `rev`, imported as a module of its own."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:{CELL_FILE}"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as err:
        sys.exit(f"error: cannot read {CELL_FILE} at --against {rev}: {err.stderr.strip()}")
    with tempfile.TemporaryDirectory() as folder:  # the file is needed only to import it
        path = Path(folder) / "search_cell_a.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("search_cell_a", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return module


class Switch:
    """Swaps the methods of the cell's module classes between two versions of the file."""

    def __init__(self, old):
        self.versions = {"A": {}, "B": {}}
        for name, cls in vars(current).items():
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module) and hasattr(old, name):
                for version, source in (("A", vars(getattr(old, name))), ("B", vars(cls))):
                    self.versions[version][name] = {k: v for k, v in source.items()
                                                    if callable(v)}

    def use(self, version: str) -> None:
        for name, methods in self.versions[version].items():
            cls = getattr(current, name)
            for other in set(self.versions["A" if version == "B" else "B"][name]) - set(methods):
                if other in vars(cls):
                    delattr(cls, other)
            for key, method in methods.items():
                setattr(cls, key, method)


def measure(args, crop: int, switch: Switch) -> dict:
    *_, weight_step, arch_step = search_step.build(supernet_args(args), crop)
    steps = {"weight": weight_step, "arch": arch_step}
    sides = {version: (lambda version=version: switch.use(version), steps) for version in "AB"}
    result = {"crop": crop, "against": args.against, "pairs": args.pairs,
              "threads": torch.get_num_threads(), "allocator": allocator_in_use()}
    result.update(alternate(sides, args.pairs))
    switch.use("B")
    return result


if __name__ == "__main__":
    preload_fast_allocator()  # as the entry scripts: tcmalloc or jemalloc where installed
    args = get_args_parser().parse_args()
    size_primitive_cache()  # as the entry scripts, before the first convolution
    switch = Switch(load_revision(args.against))
    for crop in args.crops:
        print(json.dumps(measure(args, crop, switch)), flush=True)
