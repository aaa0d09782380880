"""What train.py builds before it trains: the network the flags describe, its data, and the
network with everything that trains it (`RetrainParts`, saved and restored as one); and the
two uses that need no data, the summary and the ONNX export."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from dataloaders import build_dataset, build_loader, dataset_info, derive_seed
from engine.retrain import (build_criterion, evaluate, export_onnx, format_metrics, place,
                            resolve_genotype)
from modeling.retrain_net import AutoDeepLab, RetrainConfig
from utils.amp import amp_context, load_scaler_state
from utils.checkpoint import write_json
from utils.distributed import rank_share, shard_sampler
from utils.errors import UserError
from utils.flops import count_parameters, multi_adds
from utils.lr_scheduler import poly_schedule
from utils.run import setup_logging
from utils.sync_batchnorm import convert_sync_batchnorm

log = logging.getLogger("retrain")
STREAM_TRAIN, STREAM_VAL = 1, 3
# Class counts of the paper's datasets, so that --summary works before their loaders exist.
PAPER_NUM_CLASSES = {"cityscapes": 19, "pascal": 21, "ade20k": 150}


def num_classes_for_summary(dataset: str, data_root: str | None) -> int:
    """Classes of a registered dataset, else of one of the paper's datasets."""
    try:
        return dataset_info(dataset, data_root).num_classes
    except UserError:
        if dataset in PAPER_NUM_CLASSES:
            return PAPER_NUM_CLASSES[dataset]
        raise


def model_config(args, num_classes: int) -> RetrainConfig:
    """The model the flags describe (architecture source, F, block multiplier)."""
    genotype = resolve_genotype(args)
    block_multiplier = args.block_multiplier or genotype.steps
    if not 1 <= block_multiplier <= genotype.steps:
        raise UserError(f"--block-multiplier {block_multiplier} must be 1..{genotype.steps}, "
                        f"the cell's number of blocks")
    return RetrainConfig(num_classes=num_classes, genotype=genotype,
                         filter_multiplier=args.filter_multiplier,
                         block_multiplier=block_multiplier)


def summary(config: RetrainConfig, input_size, arch: str | None) -> dict:
    """Parameters and Multi-Adds (FlopCounterMode FLOPs / 2, meta device) of the model."""
    with torch.device("meta"):
        model = AutoDeepLab(config)
    params = count_parameters(model)
    ops = multi_adds(model, tuple(input_size))
    return {"arch": arch, "params": params, "params_m": round(params / 1e6, 3),
            "multi_adds": ops, "multi_adds_g": round(ops / 1e9, 2), "input": list(input_size),
            "filter_multiplier": config.filter_multiplier, "num_classes": config.num_classes,
            "network_path": list(config.genotype.network_path)}


def summary_or_export(args, checkpoint, is_main: bool) -> None:
    """--summary (one JSON line) or --export-onnx, on rank 0; neither needs data."""
    config = RetrainConfig.from_dict(checkpoint["model_args"]) if checkpoint \
        else model_config(args, num_classes_for_summary(args.dataset, args.data_root))
    if not is_main:
        return
    if args.summary:
        print(json.dumps(summary(config, args.summary_size, args.arch)))
        return
    setup_logging()
    model = AutoDeepLab(config)
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
    export_onnx(model, args.export_onnx, args.export_size or (args.crop_size,) * 2)


def build_data(args, device, dist_info):
    """Train loader (DistributedSampler when distributed) and val loader (this rank's share)."""
    common = dict(data_root=args.data_root, crop_size=args.crop_size, resize=args.resize,
                  seed=args.seed, max_samples=args.max_samples, use_sbd=args.use_sbd)
    train_loader = None
    if not args.eval_only:
        train_set = build_dataset(args.dataset, "train", train=True, **common)
        train_loader = build_loader(train_set, batch_size=args.batch_size, shuffle=True,
                                    workers=args.workers, device=device, drop_last=True,
                                    seed=derive_seed(args.seed, STREAM_TRAIN),
                                    sampler=shard_sampler(train_set, dist_info, args.seed))
    val_loader = None
    if args.eval_only or not args.no_val:
        val_set = build_dataset(args.dataset, args.split if args.eval_only else "val",
                                train=False, **common)
        val_loader = build_loader(rank_share(val_set, dist_info), batch_size=1,
                                  shuffle=False, workers=args.workers,
                                  device=device, drop_last=False,
                                  seed=derive_seed(args.seed, STREAM_VAL))
    return train_loader, val_loader


def build_network(config: RetrainConfig, device: torch.device, distributed: bool):
    """(model, model_without_ddp): under torchrun synchronised batch norm and DDP."""
    model = model_without_ddp = place(AutoDeepLab(config), device)
    if distributed:
        model = model_without_ddp = convert_sync_batchnorm(model, device)
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, model_without_ddp


@dataclass
class RetrainParts:
    """The network and everything that trains it, saved and restored together."""

    config: RetrainConfig
    model: torch.nn.Module  # DDP under torchrun
    model_without_ddp: AutoDeepLab
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: object
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, args, config: RetrainConfig, device: torch.device,
              distributed: bool) -> "RetrainParts":
        model, model_without_ddp = build_network(config, device, distributed)
        autocast, scaler = amp_context(args.amp, args.amp_dtype, device)
        criterion = build_criterion(args.loss, batch_size=args.batch_size,
                                    thresh=args.ohem_thresh, min_kept=args.ohem_min_kept)
        optimizer = torch.optim.SGD(model_without_ddp.parameters(), lr=args.lr,
                                    momentum=args.momentum, weight_decay=args.weight_decay,
                                    fused=True)  # one kernel, not a Python loop over tensors
        scheduler = poly_schedule(optimizer, args.iters, args.power, args.warmup_iters)
        return cls(config, model, model_without_ddp, criterion, optimizer, scheduler,
                   autocast, scaler)

    def state_dict(self) -> dict:
        """The checkpoint entries of the network and its training."""
        return {"model": self.model_without_ddp.state_dict(),
                "model_args": self.config.to_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "genotype": self.config.genotype.to_json()}

    def load_state_dict(self, checkpoint: dict) -> None:
        self.model_without_ddp.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        load_scaler_state(self.scaler, checkpoint["scaler"])


def evaluate_with_flags(run, model, val_loader, num_classes: int, autocast) -> dict:
    """`engine.retrain.evaluate` with the run's evaluation flags (crop, --eval-scales,
    --flip), as both the retraining and --eval-only evaluate."""
    args = run.args
    return evaluate(model, val_loader, num_classes, run.device, crop=args.crop_size,
                    scales=tuple(args.eval_scales), flip=args.flip, autocast=autocast,
                    show_progress=run.dist_info.is_main)


def evaluate_checkpoint(run, checkpoint, config, info, val_loader) -> dict:
    """--eval-only: the checkpoint's metrics on --split, printed and written beside it."""
    args, device = run.args, run.device
    _, model = build_network(config, device, run.dist_info.distributed)
    model.load_state_dict(checkpoint["model"])
    autocast, _ = amp_context(args.amp, args.amp_dtype, device)
    metrics = format_metrics(evaluate_with_flags(run, model, val_loader, info.num_classes,
                                                 autocast), info.class_names)
    metrics.update(checkpoint=str(args.resume), split=args.split,
                   scales=list(args.eval_scales), flip=args.flip)
    if run.dist_info.is_main:
        print(json.dumps(metrics))
        write_json(metrics, Path(args.resume).parent / f"eval_{args.split}.json")
    return metrics


def report_interval(run, step: int, steps_per_epoch: int, result, lr: float,
                    metrics: dict | None) -> None:
    """The interval's line in the log, and on rank 0 its row in metrics.csv and its
    TensorBoard scalars."""
    miou = metrics["miou"] if metrics else float("nan")
    epoch = step / steps_per_epoch
    log.info("iteration %d/%d (epoch %.2f): loss %.4f, lr %.5f, val mIoU %.4f, %.1fs",
             step, run.args.iters, epoch, result.loss, lr, miou, result.seconds)
    if run.metrics_csv is None:
        return
    run.metrics_csv.append({"step": step, "epoch": round(epoch, 3), "train_loss": result.loss,
                            "lr": lr, "val_miou": miou,
                            "val_pixel_acc": metrics["pixel_acc"] if metrics else "",
                            "seconds": result.seconds})
    run.add_scalars([("train/interval_loss", result.loss)] + (
        [("val/mIoU", miou), ("val/pixel_acc", metrics["pixel_acc"])] if metrics else []), step)
