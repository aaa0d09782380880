"""Retrain an Auto-DeepLab architecture from scratch (paper section 4, Fig. 3).

    python train.py --arch autodeeplab-s --dataset cityscapes --summary
    python train.py --dataset synthetic --genotype RUN/genotype.json
    python train.py --dataset camvid --data-root DIR --arch autodeeplab-s
    torchrun --nproc_per_node=4 train.py --dataset camvid --data-root DIR --genotype G.json
    python train.py --resume RUN/checkpoint.pth.tar [--eval-only [--eval-scales ...] [--flip]]
"""
from __future__ import annotations

import logging
import math

import torch

from config_utils.common import resume_args
from config_utils.train_args import (ARCH_KEYS, CURRENT_KEYS, RESUME_SAFE_KEYS, check_args,
                                     explicit_keys, get_args_parser, resolve_defaults)
from dataloaders import dataset_info
from engine.divergence import NonFiniteLoss, check_finite, diverged_error
from engine.retrain import IntervalProgress, train_steps
from engine.retrain_setup import (RetrainParts, build_data, evaluate_checkpoint,
                                  evaluate_with_flags, model_config, report_interval,
                                  summary_or_export)
from engine.run_state import TrainingRun
from modeling.retrain_net import RetrainConfig
from utils.allocator import preload_fast_allocator
from utils.checkpoint import RETRAIN_KIND, RETRAIN_VERSION
from utils.distributed import check_replicas_in_sync, init_distributed, run_then_leave
from utils.errors import UserError, exit_on_user_error
from utils.flops import count_parameters
from utils.interrupt import StopSignals
from utils.onednn import size_primitive_cache
from utils.run import (args_to_json, prepare_run_dir, release_run_dir, rng_state,
                       seed_everything, select_device, set_rng_state, tune_for_fixed_shapes)

log = logging.getLogger("retrain")


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
    """Check the flags and the data, prepare the run folder (rank 0 only), then evaluate
    (--eval-only) or train."""
    args, checkpoint = resume_args(args, explicit_keys(args), kind=RETRAIN_KIND,
                                   fixed_keys=ARCH_KEYS, safe_keys=RESUME_SAFE_KEYS,
                                   current_keys=CURRENT_KEYS)
    args = resolve_defaults(args)
    if args.summary or args.export_onnx:  # neither needs data
        return summary_or_export(args, checkpoint, dist_info.is_main)
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
    train_loader, val_loader = build_data(args, device, dist_info)
    if args.epochs is not None and not args.eval_only:
        args.iters = args.epochs * len(train_loader)
    out_dir = None
    if dist_info.is_main and not args.eval_only:
        out_dir = prepare_run_dir(args.out_dir, args.resume, args.dataset, "retrain")
    run_state = TrainingRun(args, dist_info, device, stop, out_dir, "train.log", log)
    if args.eval_only:
        return evaluate_checkpoint(run_state, checkpoint, config, info, val_loader)
    return train(run_state, checkpoint, config, info, train_loader, val_loader)


def train(run: TrainingRun, checkpoint, config, info, train_loader, val_loader):
    """The retraining proper, interval by interval; rank 0 writes the prepared run folder."""
    args, dist_info, device = run.args, run.dist_info, run.device
    parts = RetrainParts.build(args, config, device, dist_info.distributed)
    model = parts.model_without_ddp
    log.info("model: path %s, F=%d, %.2fM parameters; %d iterations of batch %d x %d "
             "processes, device %s", list(config.genotype.network_path),
             config.filter_multiplier, count_parameters(model) / 1e6, args.iters,
             args.batch_size, dist_info.world_size, device)
    step, best_miou, progress, metrics = 0, -math.inf, None, None
    if checkpoint is not None:
        parts.load_state_dict(checkpoint)
        step, best_miou = checkpoint["step"], checkpoint["best_miou"]
        metrics = checkpoint["metrics"]
        if checkpoint.get("position"):
            progress = IntervalProgress(**checkpoint["position"])
        set_rng_state(checkpoint["rng"])
        log.info("resumed from %s at iteration %d", args.resume, step)
    torch.autograd.set_detect_anomaly(args.detect_anomaly)
    run.open_outputs(step, key="step")
    run.state = lambda step_now, position: {
        "kind": RETRAIN_KIND, "version": RETRAIN_VERSION, **parts.state_dict(),
        "epoch": step_now // len(train_loader), "step": step_now,
        "position": position.state_dict() if position else None, "args": args_to_json(args),
        "dataset": args.dataset, "dataset_info": info.to_dict(), "best_miou": best_miou,
        "metrics": metrics, "rng": rng_state()}
    last_step = args.iters if args.stop_after_iters is None else min(
        args.iters, step + args.stop_after_iters)
    try:
        while step < last_step:
            end = min(last_step, (step // args.eval_interval + 1) * args.eval_interval)
            try:
                result = train_steps(
                    parts, train_loader, step=step, end_step=end, total_steps=args.iters,
                    device=device, drop_path_keep_prob=args.drop_path_keep_prob,
                    writer=run.writer, show_progress=dist_info.is_main, progress=progress,
                    after_step=lambda s, position: run.after_step(model, s, position, s == end))
                check_finite(model, result.step)
            except NonFiniteLoss as err:
                raise diverged_error(err, run.checkpoint_path, "--lr") from err
            step, progress, metrics = result.step, None, None
            if dist_info.distributed:
                checksum = check_replicas_in_sync(model)
                log.info("weights identical on all %d processes (checksum %.6f)",
                         dist_info.world_size, checksum)
            if val_loader is not None and (step % args.eval_interval == 0 or step == args.iters):
                metrics = evaluate_with_flags(run, model, val_loader, info.num_classes,
                                              parts.autocast)
            miou = metrics["miou"] if metrics else float("nan")
            is_best = metrics is not None and miou > best_miou
            best_miou = max(best_miou, miou) if metrics else best_miou
            report_interval(run, step, len(train_loader), result,
                            parts.optimizer.param_groups[0]["lr"], metrics)
            run.end_interval(step, is_best)
    finally:
        run.close()
    if run.out_dir is not None:
        log.info("retrain done: %s (best val mIoU %.4f)", run.out_dir, best_miou)
    return run.out_dir


if __name__ == "__main__":
    size_primitive_cache()  # before any convolution: oneDNN reads it once
    preload_fast_allocator()  # tcmalloc when installed: re-executes once, before any work
    main(get_args_parser().parse_args())
