"""How noisy the architecture gradient is, at fixed weights, as a function of the batch size.

    .venv/bin/python bench/arch_gradient_noise.py                         # a fresh supernet
    .venv/bin/python bench/arch_gradient_noise.py --checkpoint RUN/checkpoint.pth.tar

The architecture step follows the gradient of the loss on one B batch. Here the weights stay
fixed (a fresh supernet, or a search checkpoint's) and that gradient is taken on `--batches`
different random batches of the training split for each batch size. Per element of the
alphas and betas, |mean| / standard deviation over those batches is the gradient's
signal-to-noise ratio at that batch size; the median over the elements is reported (betas of
transitions that do not exist, always zero, are left out), beside the norm of the mean
gradient and the mean norm of the single ones. Sampling noise falls as 1 / sqrt(batch); a
ratio that stays low at large batches means the signal itself is weak. Prints one JSON line
per batch size.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders import IGNORE_INDEX, build_dataset, dataset_info  # noqa: E402
from engine.arch_stats import ArchStats  # noqa: E402
from modeling.supernet import AutoDeepLabSearch, SupernetConfig  # noqa: E402
from utils.checkpoint import SEARCH_KIND, load_checkpoint  # noqa: E402
from utils.onednn import size_primitive_cache  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="search checkpoint whose weights and architecture to use (default: a "
                        "fresh supernet of the flags below)")
    p.add_argument("--dataset", default="synthetic", help="dataset of the batches")
    p.add_argument("--data-root", default=None, help="its folder (real datasets)")
    p.add_argument("--crop-size", type=int, default=64, help="random training crop")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8, 16],
                   help="batch sizes to compare")
    p.add_argument("--batches", type=int, default=12, help="batches per batch size")
    p.add_argument("--filter-multiplier", type=int, default=4, help="F (fresh supernet)")
    p.add_argument("--num-layers", type=int, default=8, help="L (fresh supernet)")
    p.add_argument("--seed", type=int, default=0, help="seed of the supernet and the batches")
    return p


def build_model(args, num_classes: int) -> AutoDeepLabSearch:
    if args.checkpoint is None:
        torch.manual_seed(args.seed)
        return AutoDeepLabSearch(SupernetConfig(num_classes=num_classes,
                                                num_layers=args.num_layers,
                                                filter_multiplier=args.filter_multiplier))
    state = load_checkpoint(args.checkpoint, kind=SEARCH_KIND)
    model = AutoDeepLabSearch(SupernetConfig(**state["model_args"]))
    model.load_state_dict(state["model"])
    return model


def main(args) -> None:
    data = build_dataset(args.dataset, "train", train=True, crop_size=args.crop_size,
                         data_root=args.data_root, seed=args.seed)
    model = build_model(args, dataset_info(args.dataset).num_classes).train()
    names = [name for name, _ in model.named_arch_parameters()]
    params = model.arch_parameters()
    for p in model.weight_parameters():
        p.requires_grad_(False)  # as the architecture step: the weights are constants
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    generator = torch.Generator().manual_seed(args.seed)
    for batch_size in args.batch_sizes:
        stats = ArchStats(names)
        norms = {name: [] for name in names}
        for _ in range(args.batches):
            index = torch.randint(len(data), (batch_size,), generator=generator).tolist()
            images, targets = map(torch.stack, zip(*(data[i] for i in index)))
            grads = torch.autograd.grad(criterion(model(images), targets), params)
            stats.record(grads, [torch.zeros(1)] * len(grads))
            for name, g in zip(names, grads):
                norms[name].append(float(g.norm()))
        summary = stats.summary()
        row = {"batch": batch_size, "batches": args.batches,
               "checkpoint": args.checkpoint, "crop": args.crop_size}
        for name in names:
            mean = stats.grad_sum[name] / stats.steps
            row[name] = {"grad_snr": round(summary[f"{name}_grad_snr"], 4),
                         "mean_grad_norm": round(float(mean.norm()), 6),
                         "grad_norm": round(sum(norms[name]) / len(norms[name]), 6)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    size_primitive_cache()
    main(get_args_parser().parse_args())
