"""Command line of predict.py: segment images with a retrained model."""
from __future__ import annotations

import argparse

from config_utils.common import HelpFormatter, add_amp_args
from utils.latency import WARMUP_PASSES
from utils.errors import UserError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Predict segmentation masks with a checkpoint of train.py, and report "
                    "the inference speed.",
        formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint.pth.tar or best.pth.tar")
    p.add_argument("--input", required=True,
                   help="an image, a folder of images, or a .txt file listing images")
    p.add_argument("--out-dir", required=True, help="folder for <name>_mask.png and "
                                                    "<name>_overlay.png")
    p.add_argument("--crop-size", type=int, default=None,
                   help="sliding-window size for large images (default: the training crop)")
    p.add_argument("--scales", type=float, nargs="+", default=(1.0,),
                   help="image scales whose predictions are averaged")
    p.add_argument("--flip", action="store_true", help="also average flipped predictions")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if "
                                                  "available)")
    add_amp_args(p, "")
    p.add_argument("--warmup", type=int, default=WARMUP_PASSES,
                   help="untimed passes on the first image before the speed is measured")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint holding pickled Python objects (it can run code: "
                        "only for files from a source you trust)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """One-line errors for values that cannot work."""
    if args.crop_size is not None and args.crop_size <= 0:
        raise UserError(f"--crop-size must be positive, got {args.crop_size}")
    if any(s <= 0 for s in args.scales):
        raise UserError(f"--scales must be positive, got {list(args.scales)}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
