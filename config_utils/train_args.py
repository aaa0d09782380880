"""Command line of train.py (retraining a decoded architecture, paper section 4, Fig. 3)."""
from __future__ import annotations

import argparse

from config_utils import common
from config_utils.common import (HelpFormatter, dataset_default_help, dataset_help,
                                   fill_defaults)
from modeling.retrain_net import PAPER_FILTER_MULTIPLIERS
from utils.errors import UserError

# Paper section 5.2: poly from 0.05, power 0.9, from scratch, crops 769 (Cityscapes) and 513
# (VOC, ADE20K), 1.5M iterations on Cityscapes and on VOC, 4M on ADE20K. The paper gives no
# batch, weight decay or warm-up; these follow DeepLabv3+'s recipe (batch 8, weight decay
# 1e-4), with a short linear warm-up for the high lr. Datasets the paper did not train on
# (CamVid, COCO) get DeepLabv3+'s Cityscapes budget, 90k iterations.
PAPER_DEFAULTS = dict(
    iters=90000, batch_size=8, crop_size=513, resize=None, lr=0.05, power=0.9,
    warmup_iters=1000, momentum=0.9, weight_decay=1e-4, filter_multiplier=20,
    eval_interval=5000, workers=4, seed=0, drop_path_keep_prob=1.0,
)
DATASET_DEFAULTS = {
    # A CPU-sized run (about 2-3 minutes on two cores with one thread per process).
    "synthetic": dict(PAPER_DEFAULTS, iters=300, batch_size=4, crop_size=64, warmup_iters=20,
                      weight_decay=1e-4, filter_multiplier=8, eval_interval=100, workers=0),
    # Planted tasks: CPU-sized like synthetic, at their images' sizes.
    "planted_context": dict(PAPER_DEFAULTS, iters=300, batch_size=4, crop_size=96,
                            warmup_iters=20, filter_multiplier=8, eval_interval=100, workers=0),
    "planted_operation": dict(PAPER_DEFAULTS, iters=300, batch_size=4, crop_size=64,
                              warmup_iters=20, filter_multiplier=8, eval_interval=100,
                              workers=0),
    "planted_sparks": dict(PAPER_DEFAULTS, iters=300, batch_size=4, crop_size=96,
                           warmup_iters=20, filter_multiplier=8, eval_interval=100, workers=0),
    "cityscapes": dict(PAPER_DEFAULTS, iters=1_500_000, crop_size=769),
    "pascal": dict(PAPER_DEFAULTS, iters=1_500_000),
    "ade20k": dict(PAPER_DEFAULTS, iters=4_000_000),
}
# Flags that fix the model or the data: a resumed run must keep them.
ARCH_KEYS = ("dataset", "genotype", "net_arch", "cell_arch", "network_path", "arch",
             "filter_multiplier", "block_multiplier")
# Flags that may change on resume without changing what the run computed so far.
RESUME_SAFE_KEYS = ("iters", "epochs", "workers", "device", "out_dir", "eval_interval",
                    "no_val", "data_root", "eval_scales", "flip", "amp", "amp_dtype",
                    "checkpoint_interval")
# Flags that belong to this invocation only.
# out_dir: a resumed run stays in its checkpoint's folder (wherever it was moved to)
# unless --out-dir names another.
# split: what --eval-only evaluates now, whatever the checkpoint was trained with.
CURRENT_KEYS = ("resume", "eval_only", "split", "stop_after_iters", "local_rank", "summary",
                "export_onnx", "export_size", "out_dir") + common.RUN_SAFETY_CURRENT_KEYS
# Mid-interval checkpoints every 500 iterations: a retrain step of the paper's models takes
# about 0.5-1 s on a current GPU, so a kill loses minutes instead of up to an evaluation
# interval (5000 iterations, about an hour); writing the S-L checkpoints (weights and momentum,
# 80-350 MB) takes seconds, about 1% of the time between two.
CHECKPOINT_INTERVAL = 500
ARCH_CHOICES = tuple(PAPER_FILTER_MULTIPLIERS)


def get_args_parser() -> argparse.ArgumentParser:
    """The parser. Flags whose default depends on --dataset default to None here and are
    filled by `resolve_defaults`."""
    p = argparse.ArgumentParser(
        description="Retrain an Auto-DeepLab architecture from scratch (paper section 4, Fig. 3). "
                    "Distributed: torchrun --nproc_per_node=N train.py ...",
        formatter_class=HelpFormatter)
    d = PAPER_DEFAULTS

    dflt = dataset_default_help(d, DATASET_DEFAULTS)

    g = p.add_argument_group("architecture (give exactly one source)")
    g.add_argument("--genotype", default=None, metavar="JSON|NAME",
                   help="genotype.json written by decode_autodeeplab.py, or the name of one "
                        "in genotypes/ (autodeeplab, planted-context, ...)")
    g.add_argument("--net-arch", default=None, metavar="NPY",
                   help="network_path_space.npy (L, 4, 3); with --cell-arch")
    g.add_argument("--network-path", default=None, metavar="NPY",
                   help="network_path.npy (L,) levels; the cell from --cell-arch or the paper's")
    g.add_argument("--cell-arch", default=None, metavar="NPY",
                   help="genotype.npy (2 * steps, 2) cell rows; with --net-arch or "
                        "--network-path")
    g.add_argument("--arch", default=None, choices=ARCH_CHOICES,
                   help="the paper's network: path and cell of its Fig. 3, F = 20/32/48")
    g.add_argument("--filter-multiplier", type=int, default=None,
                   help="F: channels per block at stride 4; overrides --arch's "
                        + dflt("filter_multiplier"))
    g.add_argument("--block-multiplier", type=int, default=None,
                   help="blocks concatenated into a cell's output (default: all of the "
                        "cell's blocks)")
    g.add_argument("--drop-path-keep-prob", type=float, default=None,
                   help="keep probability of non-identity cell ops at the end of training; "
                        "the drop probability grows linearly from 0 (1: off) "
                        + dflt("drop_path_keep_prob"))

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic",
                   help=dataset_help())
    g.add_argument("--data-root", default=None, help="folder of the dataset (not for generated ones)")
    g.add_argument("--crop-size", type=int, default=None,
                   help="random training crop, and the sliding window of evaluation "
                        + dflt("crop_size"))
    g.add_argument("--resize", type=int, default=None,
                   help="resize the shorter image side to this first (default: none)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="images per step and process " + dflt("batch_size"))
    g.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers per process " + dflt("workers"))
    g.add_argument("--max-samples", type=int, default=None,
                   help="use only the first N training and validation images (quick runs)")
    g.add_argument("--use-sbd", action="store_true",
                   help="pascal only: add the SBD images to the train split (trainaug)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--iters", type=int, default=None,
                   help="training iterations " + dflt("iters") + "; --epochs replaces it")
    g.add_argument("--epochs", type=int, default=None,
                   help="budget in epochs instead of --iters (default: none)")
    g.add_argument("--lr", type=float, default=None, help="initial SGD learning rate " + dflt("lr"))
    g.add_argument("--power", type=float, default=None, help="poly schedule power " + dflt("power"))
    g.add_argument("--warmup-iters", type=int, default=None,
                   help="linear learning-rate warm-up iterations " + dflt("warmup_iters"))
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum " + dflt("momentum"))
    g.add_argument("--weight-decay", type=float, default=None,
                   help="SGD weight decay " + dflt("weight_decay"))
    g.add_argument("--loss", default="ce", choices=("ce", "ohem"),
                   help="cross-entropy, or online hard example mining cross-entropy")
    g.add_argument("--ohem-thresh", type=float, default=0.7,
                   help="OHEM keeps pixels whose true-class probability is below this")
    g.add_argument("--ohem-min-kept", type=int, default=100000,
                   help="OHEM keeps at least this many pixels per 8 images (scaled linearly "
                        "to the batch per process)")
    common.add_amp_args(g, "the training step")

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-interval", type=int, default=None,
                   help="validate and checkpoint every N iterations (and after the last) "
                        + dflt("eval_interval"))
    g.add_argument("--no-val", action="store_true", help="skip validation")
    g.add_argument("--eval-only", action="store_true",
                   help="evaluate --resume's model on the val split and exit")
    g.add_argument("--eval-scales", type=float, nargs="+", default=(1.0,),
                   help="image scales whose softmax outputs are averaged")
    g.add_argument("--flip", action="store_true",
                   help="also average horizontally flipped predictions")
    g.add_argument("--split", default="val", choices=("val", "test"),
                   help="split that --eval-only evaluates")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=None, help="seed of everything " + dflt("seed"))
    g.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available, else cpu; "
                        "torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--out-dir", default=None,
                   help="run folder (default: run/<dataset>/retrain-<time>, or the "
                        "checkpoint's folder with --resume)")
    g.add_argument("--resume", default=None, help="continue from this checkpoint.pth.tar")
    g.add_argument("--stop-after-iters", type=int, default=None,
                   help="stop after N iterations of this invocation (the schedule still "
                        "spans the whole budget); continue later with --resume")
    g.add_argument("--summary", action="store_true",
                   help="print one JSON line of parameters and Multi-Adds and exit (no data)")
    g.add_argument("--summary-size", type=int, nargs=2, default=(1024, 2048),
                   metavar=("H", "W"), help="input size that --summary counts Multi-Adds at")
    g.add_argument("--export-onnx", default=None, metavar="PATH",
                   help="write the model (of --resume, else freshly built) as ONNX for "
                        "--export-size images, any batch size, and exit (needs onnx)")
    g.add_argument("--export-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="image size --export-onnx traces the network at (default: "
                        "--crop-size square); export at the size you deploy")
    common.add_run_safety_args(g, CHECKPOINT_INTERVAL, "an evaluation interval")
    # torch.distributed.launch passes --local-rank (new) or --local_rank (old); torchrun
    # sets the LOCAL_RANK environment variable instead, which wins when present.
    g.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                   help=argparse.SUPPRESS)
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every flag left at None with its default for `args.dataset`; `--arch` sets F."""
    if args.filter_multiplier is None and args.arch is not None:
        args.filter_multiplier = PAPER_FILTER_MULTIPLIERS[args.arch]
    return fill_defaults(args, DATASET_DEFAULTS.get(args.dataset, PAPER_DEFAULTS))


def explicit_keys(args: argparse.Namespace) -> set[str]:
    """The flags the user actually gave (before `resolve_defaults`)."""
    return common.explicit_keys(args, get_args_parser())


def check_args(args: argparse.Namespace, processes: int = 1) -> None:
    """One-line errors for values that cannot work; `processes`: the torchrun world size, whose
    synchronised batch norm pools the statistics of all processes' batches."""
    common.require_positive(args, ("batch_size", "crop_size", "filter_multiplier",
                                   "eval_interval", "iters", "epochs"))
    if not args.eval_only:
        common.require_two_images(args.batch_size, processes,
                                  " (or 1 per process under torchrun with 2 or more processes, "
                                  "whose batch norm is synchronised)")
    if not 0 < args.drop_path_keep_prob <= 1:
        raise UserError(f"--drop-path-keep-prob must be in (0, 1], got {args.drop_path_keep_prob}")
    common.require_non_negative(args, ("warmup_iters", "checkpoint_interval"))
    if any(s <= 0 for s in args.eval_scales):
        raise UserError(f"--eval-scales must be positive, got {list(args.eval_scales)}")
    if args.eval_only and not args.resume:
        raise UserError("--eval-only needs --resume CHECKPOINT, the model to evaluate")

