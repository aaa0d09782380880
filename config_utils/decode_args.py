"""Command-line options of decode_autodeeplab.py."""
from __future__ import annotations

import argparse

from config_utils.common import HelpFormatter

DEFAULT_TOP_K = 5


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


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
                        help="folder for the outputs; default: the checkpoint's folder")
    parser.add_argument("--top-k", type=_non_negative_int, default=DEFAULT_TOP_K,
                        help="how many paths to list, the decoded one included "
                             "(0: list none)")
    parser.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                        help="write architecture.png")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load a checkpoint holding pickled Python objects (it can run "
                             "code: only for files from a source you trust)")
    return parser
