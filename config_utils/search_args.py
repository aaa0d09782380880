"""Command line of train_autodeeplab.py (architecture search)."""
from __future__ import annotations

import argparse
import math

from config_utils import common
from config_utils.common import (HelpFormatter, dataset_default_help, dataset_help,
                                   fill_defaults)
from modeling.supernet import IMPLEMENTATIONS
from utils.errors import UserError

# Paper defaults (paper section 4.1) for real datasets; a CPU-sized search for synthetic data.
PAPER_DEFAULTS = dict(
    epochs=40, batch_size=2, crop_size=321, resize=None, lr=0.025, min_lr=0.001, momentum=0.9,
    weight_decay=3e-4, arch_lr=3e-3, arch_weight_decay=1e-3, alpha_epoch=20,
    filter_multiplier=8, block_multiplier=5, steps=5, num_layers=12, eval_interval=1,
    grad_clip=5.0, workers=4, seed=0, partial_channels=1, supernet="fast", skip_dropout=0.0,
    beta_decay=0.0,
)
# Ten times the paper's architecture learning rate, for searches of a few hundred steps: at
# the paper's 3e-3 the alphas and betas move by hundredths in such a search (docs/search_learning/
# README.md).
SMALL_BUDGET_ARCH_LR = 3e-2
DATASET_DEFAULTS = {
    "synthetic": dict(PAPER_DEFAULTS, epochs=4, batch_size=4, crop_size=64, alpha_epoch=2,
                      filter_multiplier=4, num_layers=8, workers=0),
    # Planted tasks (dataloaders/datasets/planted.py): a search of about 6 minutes on 2 CPU
    # cores, architecture steps from the 49th iteration on, the "small-budget" architecture
    # learning rate (SMALL_BUDGET_ARCH_LR), validation after the last epoch only.
    "planted_context": dict(PAPER_DEFAULTS, epochs=10, batch_size=4, crop_size=96,
                            alpha_epoch=3, filter_multiplier=4, num_layers=8, workers=0,
                            eval_interval=10, arch_lr=SMALL_BUDGET_ARCH_LR),
    "planted_operation": dict(PAPER_DEFAULTS, epochs=10, batch_size=4, crop_size=64,
                              alpha_epoch=3, filter_multiplier=4, num_layers=8, workers=0,
                              eval_interval=10, arch_lr=SMALL_BUDGET_ARCH_LR),
    "planted_sparks": dict(PAPER_DEFAULTS, epochs=10, batch_size=4, crop_size=96,
                           alpha_epoch=3, filter_multiplier=4, num_layers=8, workers=0,
                           eval_interval=10, arch_lr=SMALL_BUDGET_ARCH_LR),
    # Cityscapes is searched at half resolution (paper section 4.1).
    "cityscapes": dict(PAPER_DEFAULTS, resize=512),
}
# Flags that fix the supernet's shape or data: a resumed run must keep them.
ARCH_KEYS = ("dataset", "filter_multiplier", "block_multiplier", "steps", "num_layers",
             "partial_channels", "supernet")
# Flags that may change on resume without changing what the run computes so far.
RESUME_SAFE_KEYS = ("epochs", "workers", "device", "out_dir", "eval_interval", "no_val",
                    "resume", "data_root", "checkpoint_interval", "amp", "amp_dtype")
# Flags that belong to this invocation only.
# out_dir: a resumed run stays in its checkpoint's folder (wherever it was moved to)
# unless --out-dir names another.
# cuda_graphs: a resumed run is graphed only when asked again (its checkpoints are portable),
# so a graphed run's checkpoint resumes on a CPU without a flag to unset.
CURRENT_KEYS = ("resume", "stop_after_epochs", "out_dir",
                "cuda_graphs") + common.RUN_SAFETY_CURRENT_KEYS
# Mid-epoch checkpoints every 50 iterations: the paper's search takes about 9 s per iteration
# (3 P100-days for 40 x 743), a few on current GPUs, so a kill loses minutes, not an epoch
# (743 iterations); a checkpoint of the F=8 supernet (45M weights and their momentum, about
# 360 MB) takes a few seconds to write, 1-3% of the time between two.
CHECKPOINT_INTERVAL = 50


def get_args_parser() -> argparse.ArgumentParser:
    """The parser. Flags whose default depends on --dataset default to None here and are
    filled by `resolve_defaults`."""
    p = argparse.ArgumentParser(
        description="Auto-DeepLab architecture search: a supernet with cell-level alphas and "
                    "network-level betas, trained bilevel on two halves of the training set.",
        formatter_class=HelpFormatter)
    d = PAPER_DEFAULTS

    dflt = dataset_default_help(d, DATASET_DEFAULTS)

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic",
                   help=dataset_help())
    g.add_argument("--data-root", default=None,
                   help="folder of the dataset (not needed for generated ones)")
    g.add_argument("--crop-size", type=int, default=None,
                   help="random crop size " + dflt("crop_size"))
    g.add_argument("--resize", type=int, default=None,
                   help="resize the shorter image side to this before cropping "
                        "(default: 512 for cityscapes, none otherwise)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="images per step " + dflt("batch_size"))
    g.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers " + dflt("workers"))
    g.add_argument("--num-samples", type=int, default=None,
                   help="generated datasets only: training images (default: 64 for synthetic, "
                        "128 for planted_*; 16 for val)")
    g.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="generated datasets only: image size (default: 96 96 for synthetic, "
                        "128 128 for planted_context, 64 64 for planted_operation, 96 96 for "
                        "planted_sparks)")
    g.add_argument("--max-samples", type=int, default=None,
                   help="use only the first N training and validation images (quick runs)")
    g.add_argument("--use-sbd", action="store_true",
                   help="pascal only: add the SBD images to the train split (trainaug)")

    g = p.add_argument_group("supernet")
    g.add_argument("--filter-multiplier", type=int, default=None,
                   help="F: channels per block at stride 4 " + dflt("filter_multiplier"))
    g.add_argument("--block-multiplier", type=int, default=None,
                   help="blocks concatenated into a cell's output " + dflt("block_multiplier"))
    g.add_argument("--steps", type=int, default=None, help="blocks per cell " + dflt("steps"))
    g.add_argument("--num-layers", type=int, default=None, help="L: layers " + dflt("num_layers"))
    g.add_argument("--supernet", default=None, choices=IMPLEMENTATIONS,
                   help="fast: the cells of modeling/search_cell.py; plain: one module per "
                        "edge as DARTS writes it (modeling/plain_supernet.py), the same "
                        "computation, several times slower, for reading and checking "
                        + dflt("supernet"))
    g.add_argument("--checkpoint-cells", action="store_true",
                   help="recompute cell activations in the backward pass (less memory, "
                        "same gradients, slower)")
    g.add_argument("--partial-channels", type=int, default=None, metavar="K",
                   help="PC-DARTS partial channel connections: operations see 1/K of each "
                        "input's channels, blocks sum their edges with learnt edge weights; a "
                        "different algorithm from the paper's (1), for less memory; K must "
                        "divide --filter-multiplier " + dflt("partial_channels"))

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="search epochs " + dflt("epochs"))
    g.add_argument("--lr", type=float, default=None,
                   help="initial weight learning rate (cosine) " + dflt("lr"))
    g.add_argument("--min-lr", type=float, default=None,
                   help="final weight learning rate " + dflt("min_lr"))
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum " + dflt("momentum"))
    g.add_argument("--weight-decay", type=float, default=None,
                   help="SGD weight decay " + dflt("weight_decay"))
    g.add_argument("--grad-clip", type=float, default=None,
                   help="clip the weight gradient norm to this (0: off) " + dflt("grad_clip"))
    g.add_argument("--arch-lr", type=float, default=None,
                   help="Adam learning rate of alphas and betas " + dflt("arch_lr"))
    g.add_argument("--arch-weight-decay", type=float, default=None,
                   help="Adam weight decay of alphas and betas " + dflt("arch_weight_decay"))
    g.add_argument("--alpha-epoch", type=int, default=None,
                   help="epoch from which architecture steps run " + dflt("alpha_epoch"))
    g.add_argument("--skip-dropout", type=float, default=None, metavar="RATE",
                   help="dropout on every skip_connect while searching, against a collapse to "
                        "skip connections (P-DARTS; not in the paper) " + dflt("skip_dropout"))
    g.add_argument("--beta-decay", type=float, default=None, metavar="WEIGHT",
                   help="beta-DARTS' Beta-Decay regulariser of the alphas (the cell's operation "
                        "weights, not the network-level betas), its weight growing linearly "
                        "from 0 towards WEIGHT over the epochs; 0: off (not in the paper) "
                        + dflt("beta_decay"))
    common.add_amp_args(g, "the weight and the architecture step")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="experimental, not yet run on a GPU: capture the weight and the "
                        "architecture step as CUDA graphs after 3 eager steps, which removes "
                        "the host's cost of their some 80,000 operator calls (docs/gpus.md); "
                        "one process on CUDA, float32 or bf16; a resumed run uses it only when "
                        "given again")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=None, help="seed of everything, the A/B split too "
                   + dflt("seed"))
    g.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    g.add_argument("--out-dir", default=None,
                   help="run folder (default: run/<dataset>/search-<time>, or the checkpoint's "
                        "folder with --resume)")
    g.add_argument("--eval-interval", type=int, default=None,
                   help="validate every N epochs (and after the last) " + dflt("eval_interval"))
    g.add_argument("--no-val", action="store_true", help="skip validation")
    g.add_argument("--resume", default=None, help="continue from this checkpoint.pth.tar")
    g.add_argument("--stop-after-epochs", type=int, default=None,
                   help="stop after N epochs of this invocation (the schedule still spans "
                        "--epochs); continue later with --resume, e.g. on time-limited jobs")
    common.add_run_safety_args(g, CHECKPOINT_INTERVAL, "an epoch")
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every flag left at None with its default for `args.dataset`."""
    return fill_defaults(args, DATASET_DEFAULTS.get(args.dataset, PAPER_DEFAULTS))


def explicit_keys(args: argparse.Namespace) -> set[str]:
    """The flags the user actually gave (before `resolve_defaults`)."""
    return common.explicit_keys(args, get_args_parser())


def check_args(args: argparse.Namespace) -> None:
    """One-line errors for values that cannot work."""
    common.require_positive(args, ("epochs", "batch_size", "crop_size", "filter_multiplier",
                                   "block_multiplier", "steps", "num_layers", "eval_interval",
                                   "partial_channels"))
    common.require_two_images(args.batch_size)
    if args.block_multiplier > args.steps:
        raise UserError(f"--block-multiplier {args.block_multiplier} exceeds --steps "
                        f"{args.steps}; a cell concatenates at most all of its blocks")
    if args.filter_multiplier % args.partial_channels:
        raise UserError(f"--partial-channels {args.partial_channels} must divide "
                        f"--filter-multiplier {args.filter_multiplier}")
    common.require_non_negative(args, ("alpha_epoch", "checkpoint_interval"))
    if not (math.isfinite(args.beta_decay) and args.beta_decay >= 0.0):
        raise UserError(f"--beta-decay {args.beta_decay} must be 0 (off) or positive: the "
                        "regulariser's final weight")
    if not 0.0 <= args.skip_dropout < 1.0:
        raise UserError(f"--skip-dropout {args.skip_dropout} must be in [0, 1): a rate")

