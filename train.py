"""Retrain an Auto-DeepLab architecture from scratch (paper section 4, Fig. 3).

    python train.py --arch autodeeplab-s --dataset cityscapes --summary
    python train.py --dataset synthetic --genotype RUN/genotype.json
    python train.py --dataset camvid --data-root DIR --arch autodeeplab-s
    torchrun --nproc_per_node=4 train.py --dataset camvid --data-root DIR --genotype G.json
    python train.py --resume RUN/checkpoint.pth.tar [--eval-only [--eval-scales ...] [--flip]]
"""
from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from config_utils.common import resume_args
from config_utils.train_args import (ARCH_KEYS, CURRENT_KEYS, RESUME_SAFE_KEYS, check_args,
                                     explicit_keys, get_args_parser, resolve_defaults)
from dataloaders import build_dataset, build_loader, dataset_info, derive_seed
from engine.retrain import (IntervalProgress, build_criterion, evaluate, export_onnx,
                            format_metrics, place, resolve_genotype, train_steps)
from engine.divergence import NonFiniteLoss, check_finite, diverged_error
from modeling.retrain_net import AutoDeepLab, RetrainConfig
from utils.allocator import allocator_in_use, preload_fast_allocator
from utils.onednn import size_primitive_cache
from utils.amp import amp_context, load_scaler_state
from utils.checkpoint import (RETRAIN_KIND, RETRAIN_VERSION, save_checkpoint, save_with_best,
                              write_json)
from utils.distributed import (agreed_stop, check_replicas_in_sync, init_distributed,
                               rank_share, run_then_leave, shard_sampler, stop_if_requested)
from utils.errors import UserError, exit_on_user_error
from utils.interrupt import Interrupted, StopSignals
from utils.flops import count_parameters, multi_adds
from utils.lr_scheduler import poly_schedule
from utils.sync_batchnorm import convert_sync_batchnorm
from utils.run import (MetricsCSV, args_to_json, prepare_run_dir, release_run_dir, rng_state,
                       seed_everything, select_device, set_rng_state, setup_logging,
                       summary_writer, tune_for_fixed_shapes)

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


@exit_on_user_error
def main(args):
    dist_info, dist_device = init_distributed(args.local_rank, args.device)

    def body():
        try:
            with StopSignals() as stop:
                return run(args, dist_info, dist_device, stop)
        finally:
            release_run_dir()

    return run_then_leave(dist_info, "train.py", body)


def run(args, dist_info, dist_device, stop):
    args, checkpoint = resume_args(args, explicit_keys(args), kind=RETRAIN_KIND,
                                   fixed_keys=ARCH_KEYS, safe_keys=RESUME_SAFE_KEYS,
                                   current_keys=CURRENT_KEYS)
    args = resolve_defaults(args)
    if args.summary or args.export_onnx:  # neither needs data
        config = RetrainConfig.from_dict(checkpoint["model_args"]) if checkpoint \
            else model_config(args, num_classes_for_summary(args.dataset, args.data_root))
        if args.summary and dist_info.is_main:
            print(json.dumps(summary(config, args.summary_size, args.arch)))
        elif args.export_onnx and dist_info.is_main:
            setup_logging()
            model = AutoDeepLab(config)
            if checkpoint:
                model.load_state_dict(checkpoint["model"])
            export_onnx(model, args.export_onnx, args.export_size or (args.crop_size,) * 2)
        return None
    info = dataset_info(args.dataset, args.data_root)
    config = RetrainConfig.from_dict(checkpoint["model_args"]) if checkpoint \
        else model_config(args, info.num_classes)
    if config.num_classes != info.num_classes:
        raise UserError(f"checkpoint {args.resume} was trained with {config.num_classes} "
                        f"classes but dataset {args.dataset} now has {info.num_classes}; "
                        "start a new run")
    check_args(args, dist_info.world_size)
    seed_everything(args.seed)
    device = dist_device or select_device(args.device)
    tune_for_fixed_shapes(device)
    show = dist_info.is_main
    train_loader, val_loader = build_data(args, device, dist_info)
    if args.epochs is not None and not args.eval_only:
        args.iters = args.epochs * len(train_loader)
    out_dir = None
    if dist_info.is_main and not args.eval_only:
        out_dir = prepare_run_dir(args.out_dir, args.resume, args.dataset, "retrain")
        args.out_dir = str(out_dir)
        setup_logging(out_dir / "train.log")
    else:
        setup_logging(None, logging.INFO if show else logging.WARNING)
    log.info("command: %s", " ".join(sys.argv))
    log.info("memory allocator: %s; oneDNN primitive cache: %s", allocator_in_use(),
             size_primitive_cache())

    model_without_ddp = place(AutoDeepLab(config), device)
    model = model_without_ddp
    if dist_info.distributed:
        model = model_without_ddp = convert_sync_batchnorm(model, device)
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast, scaler = amp_context(args.amp, args.amp_dtype, device)
    eval_kwargs = dict(crop=args.crop_size, scales=tuple(args.eval_scales), flip=args.flip,
                       autocast=autocast, show_progress=show)
    if args.eval_only:
        model_without_ddp.load_state_dict(checkpoint["model"])
        metrics = format_metrics(evaluate(model_without_ddp, val_loader, info.num_classes,
                                          device, **eval_kwargs), info.class_names)
        metrics.update(checkpoint=str(args.resume), split=args.split,
                       scales=list(args.eval_scales), flip=args.flip)
        if dist_info.is_main:
            print(json.dumps(metrics))
            write_json(metrics, Path(args.resume).parent / f"eval_{args.split}.json")
        return metrics

    log.info("model: path %s, F=%d, %.2fM parameters; %d iterations of batch %d x %d "
             "processes, device %s", list(config.genotype.network_path),
             config.filter_multiplier, count_parameters(model_without_ddp) / 1e6, args.iters,
             args.batch_size, dist_info.world_size, device)
    criterion = build_criterion(args.loss, batch_size=args.batch_size, thresh=args.ohem_thresh,
                                min_kept=args.ohem_min_kept)
    optimizer = torch.optim.SGD(model_without_ddp.parameters(), lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay,
                                fused=True)  # one kernel, not a Python loop over tensors
    scheduler = poly_schedule(optimizer, args.iters, args.power, args.warmup_iters)
    step, best_miou, progress, metrics = 0, -math.inf, None, None
    if checkpoint is not None:
        model_without_ddp.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        load_scaler_state(scaler, checkpoint["scaler"])
        step, best_miou = checkpoint["step"], checkpoint["best_miou"]
        metrics = checkpoint["metrics"]
        if checkpoint.get("position"):
            progress = IntervalProgress(**checkpoint["position"])
        set_rng_state(checkpoint["rng"])
        log.info("resumed from %s at iteration %d", args.resume, step)
    torch.autograd.set_detect_anomaly(args.detect_anomaly)

    writer = metrics_csv = None
    if out_dir is not None:
        write_json(args_to_json(args), out_dir / "args.json")
        writer = summary_writer(out_dir)
        metrics_csv = MetricsCSV(out_dir / "metrics.csv")
        metrics_csv.truncate_after(step, key="step")
    checkpoint_path = out_dir / "checkpoint.pth.tar" if out_dir is not None else None

    def state(step_now: int, position: IntervalProgress | None) -> dict:
        """Everything a resume needs; `position` holds a mid-interval checkpoint's sums."""
        return {"kind": RETRAIN_KIND, "version": RETRAIN_VERSION,
                "model": model_without_ddp.state_dict(), "model_args": config.to_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": step_now // len(train_loader),
                "step": step_now, "position": position.state_dict() if position else None,
                "args": args_to_json(args), "genotype": config.genotype.to_json(),
                "dataset": args.dataset, "dataset_info": info.to_dict(),
                "best_miou": best_miou, "metrics": metrics,
                "rng": rng_state()}

    def after_step(step_now: int, position: IntervalProgress) -> None:
        requested = agreed_stop(stop.requested, dist_info, device)
        due = args.checkpoint_interval and step_now % args.checkpoint_interval == 0 \
            and step_now < end  # the interval's end writes its own
        if (due or requested) and checkpoint_path is not None:
            check_finite(model_without_ddp, step_now)
            save_checkpoint(state(step_now, position), checkpoint_path)
        if requested:
            raise Interrupted(requested, checkpoint_path)

    last_step = args.iters if args.stop_after_iters is None else min(
        args.iters, step + args.stop_after_iters)
    try:
        while step < last_step:
            end = min(last_step, (step // args.eval_interval + 1) * args.eval_interval)
            try:
                result = train_steps(model, criterion, optimizer, scheduler, scaler,
                                     train_loader, step=step, end_step=end,
                                     total_steps=args.iters, device=device, autocast=autocast,
                                     drop_path_keep_prob=args.drop_path_keep_prob,
                                     model_without_ddp=model_without_ddp, writer=writer,
                                     show_progress=show, progress=progress,
                                     after_step=after_step)
                check_finite(model_without_ddp, result.step)
            except NonFiniteLoss as err:
                raise diverged_error(err, checkpoint_path, "--lr") from err
            step, progress = result.step, None
            if dist_info.distributed:
                checksum = check_replicas_in_sync(model_without_ddp)
                log.info("weights identical on all %d processes (checksum %.6f)",
                         dist_info.world_size, checksum)
            metrics = None
            if val_loader is not None and (step % args.eval_interval == 0 or step == args.iters):
                metrics = evaluate(model_without_ddp, val_loader, info.num_classes, device,
                                   **eval_kwargs)
            miou = metrics["miou"] if metrics else float("nan")
            is_best = metrics is not None and miou > best_miou
            best_miou = max(best_miou, miou) if metrics else best_miou
            epoch = step / len(train_loader)
            log.info("iteration %d/%d (epoch %.2f): loss %.4f, lr %.5f, val mIoU %.4f, %.1fs",
                     step, args.iters, epoch, result.loss, optimizer.param_groups[0]["lr"],
                     miou, result.seconds)
            if out_dir is not None:
                metrics_csv.append({"step": step, "epoch": round(epoch, 3),
                                    "train_loss": result.loss,
                                    "lr": optimizer.param_groups[0]["lr"], "val_miou": miou,
                                    "val_pixel_acc": metrics["pixel_acc"] if metrics else "",
                                    "seconds": result.seconds})
                writer.add_scalar("train/interval_loss", result.loss, step)
                if metrics:
                    writer.add_scalar("val/mIoU", miou, step)
                    writer.add_scalar("val/pixel_acc", metrics["pixel_acc"], step)
                writer.flush()
                save_with_best(state(step, None), checkpoint_path, is_best)
            stop_if_requested(stop, dist_info, device, checkpoint_path)
    finally:
        if writer is not None:
            writer.close()
    if out_dir is not None:
        log.info("retrain done: %s (best val mIoU %.4f)", out_dir, best_miou)
    return out_dir

if __name__ == "__main__":
    size_primitive_cache()  # before any convolution: oneDNN reads it once
    preload_fast_allocator()  # tcmalloc when installed: re-executes once, before any work
    main(get_args_parser().parse_args())
