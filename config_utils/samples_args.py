"""Command line of write_samples.py: images of a generated dataset as files."""
from __future__ import annotations

import argparse

from config_utils.common import HelpFormatter


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write images of a generated dataset (synthetic, planted_context, "
                    "planted_operation, planted_sparks) and their labels as PNG files, e.g. to "
                    "try predict.py on.",
        formatter_class=HelpFormatter)
    p.add_argument("--dataset", default="synthetic",
                   help="a generated dataset: synthetic, planted_context, planted_operation or "
                        "planted_sparks")
    p.add_argument("--out-dir", required=True, help="folder to write the PNG files to")
    p.add_argument("--split", default="val", choices=("train", "val", "test"),
                   help="which split's images")
    p.add_argument("--count", type=int, default=4, help="how many images")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (as --seed of the scripts)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="image height and width (default: the dataset's)")
    return p
