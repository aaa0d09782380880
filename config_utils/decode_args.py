"""Command-line options of decode_autodeeplab.py."""
from __future__ import annotations

import argparse

from config_utils.common import HelpFormatter

DEFAULT_TOP_K = 5
SELECTIONS = ("alphas", "perturbation", "pruning")
DEFAULT_SCORE_BATCH = 8


def _int_at_least(minimum: int):
    """An argparse type: an int of at least `minimum`."""
    def integer(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return integer


def get_args_parser() -> argparse.ArgumentParser:
    """Parser for `decode_autodeeplab.py`."""
    parser = argparse.ArgumentParser(
        description="Decode a search checkpoint into genotype.json, the seed's .npy arrays and "
                    "architecture.png, and print a summary (paper section 3.3).",
        formatter_class=HelpFormatter)
    parser.add_argument("--resume", required=True, metavar="CHECKPOINT",
                        help="search checkpoint of train_autodeeplab.py (any epoch's "
                             "checkpoint.pth.tar or best.pth.tar)")
    parser.add_argument("--out-dir", default=None, metavar="DIR",
                        help="folder for the outputs; default: the checkpoint's folder (with "
                             "--select perturbation or pruning its perturbation/ or pruning/ "
                             "subfolder)")
    parser.add_argument("--top-k", type=_int_at_least(0), default=DEFAULT_TOP_K,
                        help="how many paths to list, the decoded one included "
                             "(0: list none)")
    parser.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                        help="write architecture.png")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load a checkpoint holding pickled Python objects (it can run "
                             "code: only for files from a source you trust)")
    g = parser.add_argument_group(
        "selection by perturbation or pruning (not the paper's decode; both need the search's "
        "data)")
    g.add_argument("--select", choices=SELECTIONS, default="alphas",
                   help="how the cell's operations and inputs are chosen: by the alphas' "
                        "weights (the paper, section 3.3); by how far the supernet's "
                        "validation loss rises when each is removed from the whole supernet "
                        "(DARTS-PT, Wang et al. 2021; engine/perturbation.py); or by removing "
                        "the cheapest (input, operation) pair one at a time, scoring again "
                        "after each, until two pairs per block are left (engine/pruning.py). "
                        "The path is always decoded from the betas")
    g.add_argument("--data-root", default=None, metavar="DIR",
                   help="with --select perturbation or pruning: the dataset's folder, if it moved since "
                        "the search (default: where the search read it)")
    g.add_argument("--max-images", type=_int_at_least(1), default=None, metavar="N",
                   help="with --select perturbation or pruning: score on the first N validation images "
                        "(default: all; the time grows with N)")
    g.add_argument("--batch-size", type=_int_at_least(1), default=None, metavar="N",
                   help="with --select perturbation or pruning: validation images per forward pass "
                        f"(default: {DEFAULT_SCORE_BATCH})")
    g.add_argument("--batch-norm", choices=("batch", "running"), default=None,
                   help="with --select perturbation or pruning: normalise with each batch's statistics "
                        "(DARTS-PT: the running ones were gathered with every operation in "
                        "place) or with the running ones (default: batch)")
    g.add_argument("--device", default=None,
                   help="with --select perturbation or pruning: cpu, cuda or cuda:N (default: cuda when "
                        "available, else cpu)")
    return parser
