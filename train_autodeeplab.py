"""Auto-DeepLab architecture search (paper sections 3 and 4.1).

    python train_autodeeplab.py --dataset synthetic
    CUDA_VISIBLE_DEVICES=0 python train_autodeeplab.py --dataset camvid --data-root DIR
    python train_autodeeplab.py --resume RUN/checkpoint.pth.tar
    torchrun --nproc_per_node=4 train_autodeeplab.py --dataset camvid --data-root DIR
"""
from __future__ import annotations

import logging
import math

import torch

from config_utils.common import resume_args
from config_utils.search_args import (ARCH_KEYS, CURRENT_KEYS, RESUME_SAFE_KEYS, check_args,
                                      explicit_keys, get_args_parser, resolve_defaults)
from dataloaders import dataset_info
from engine.cuda_graphs import check_cuda_graphs
from engine.divergence import NonFiniteLoss, check_finite, diverged_error
from engine.run_state import TrainingRun
from engine.search import EpochProgress, evaluate, train_one_epoch
from engine.search_checkpoint import searched_over
from engine.search_setup import SearchParts, build_data, report_epoch
from modeling.operations import PRIMITIVES
from utils.allocator import preload_fast_allocator
from utils.checkpoint import SEARCH_KIND, SEARCH_VERSION
from utils.distributed import (DistInfo, broadcast_buffers, check_replicas_in_sync,
                               init_distributed, run_then_leave)
from utils.errors import UserError, exit_on_user_error
from utils.interrupt import StopSignals
from utils.onednn import size_primitive_cache
from utils.run import (args_to_json, prepare_run_dir, release_run_dir, rng_state,
                       seed_everything, select_device, set_rng_state, tune_for_fixed_shapes)

log = logging.getLogger("search")


@exit_on_user_error
def main(args):
    dist_info, dist_device = init_distributed(None, args.device)
    return run_then_leave(dist_info, "train_autodeeplab.py",
                          lambda: run(args, dist_info, dist_device))


def run(args, dist_info: DistInfo, dist_device):
    """Check the flags and the data, prepare the run folder (rank 0 only), search."""
    args, checkpoint = resume_args(args, explicit_keys(args), kind=SEARCH_KIND,
                                   fixed_keys=ARCH_KEYS, safe_keys=RESUME_SAFE_KEYS,
                                   current_keys=CURRENT_KEYS)
    args = resolve_defaults(args)
    check_args(args)
    if checkpoint is not None:
        searched_over(checkpoint, args.resume, resume=True)  # the same operation table
    saved_world = checkpoint.get("world_size", 1) if checkpoint is not None else None
    if saved_world not in (None, dist_info.world_size):
        raise UserError(f"checkpoint {args.resume} was searched by {saved_world} process(es) "
                        f"but this run has {dist_info.world_size}; resume with as many "
                        "(torchrun --nproc_per_node): the batches of an epoch depend on it")
    seed_everything(args.seed)
    device = dist_device or select_device(args.device)
    check_cuda_graphs(args, device, dist_info.distributed)
    tune_for_fixed_shapes(device)
    dataset_info(args.dataset, args.data_root)  # an unknown name fails here, before any writing
    # Data problems are found before the run folder is made, so a typo leaves no debris.
    data = build_data(args, device, dist_info, checkpoint["split"] if checkpoint else None)
    if checkpoint is not None and checkpoint["model_args"]["num_classes"] != data[0].num_classes:
        raise UserError(f"checkpoint {args.resume} was searched with "
                        f"{checkpoint['model_args']['num_classes']} classes but dataset "
                        f"{args.dataset} now has {data[0].num_classes}; start a new run")
    out_dir = None
    if dist_info.is_main:  # only rank 0 writes the run folder
        out_dir = prepare_run_dir(args.out_dir, args.resume, args.dataset, "search")
    try:
        with StopSignals() as stop:
            run_state = TrainingRun(args, dist_info, device, stop, out_dir, "search.log", log)
            return search(run_state, checkpoint, *data)
    finally:
        if out_dir is not None:
            release_run_dir(out_dir)


def search(run: TrainingRun, checkpoint, info, split, loader_a, loader_b, val_loader):
    """The search proper; rank 0 writes the prepared run folder."""
    args, dist_info, device = run.args, run.dist_info, run.device
    log.info("dataset %s: %d classes, A %d / B %d images, %d steps per epoch of batch %d x %d "
             "processes, device %s", args.dataset, info.num_classes, len(split["a"]),
             len(split["b"]), len(loader_a), args.batch_size, dist_info.world_size, device)
    torch.autograd.set_detect_anomaly(args.detect_anomaly)
    parts = SearchParts.build(args, info.num_classes, len(loader_a), loader_b, device)
    model = parts.model
    start_epoch, global_step, best_miou, progress, metrics = 0, 0, -math.inf, None, None
    if checkpoint is not None:
        parts.load_state_dict(checkpoint)
        start_epoch, global_step = checkpoint["epoch"], checkpoint["global_step"]
        best_miou, metrics = checkpoint["best_miou"], checkpoint["metrics"]
        if checkpoint.get("position"):
            progress = EpochProgress(**checkpoint["position"])
        set_rng_state(checkpoint["rng"])
        log.info("resumed from %s at epoch %d, batch %d (step %d)", args.resume, start_epoch,
                 progress.batch if progress else 0, global_step)
    log.info("%s", parts.describe())
    if args.cuda_graphs:
        parts.capture_steps(device)
    run.open_outputs(start_epoch, key="epoch")

    def state(step: int, position: EpochProgress | None) -> dict:
        """Everything a resume needs; `position` is where a mid-epoch checkpoint stands."""
        return {"kind": SEARCH_KIND, "version": SEARCH_VERSION, **parts.state_dict(),
                "primitives": list(PRIMITIVES),
                "epoch": epoch if position else epoch + 1,
                "position": position.state_dict() if position else None,
                "global_step": step, "split": split, "rng": rng_state(),
                "args": args_to_json(args), "best_miou": best_miou, "metrics": metrics,
                "dataset": args.dataset, "world_size": dist_info.world_size}

    run.state = state
    last_epoch = args.epochs if args.stop_after_epochs is None else min(
        args.epochs, start_epoch + args.stop_after_epochs)
    try:
        for epoch in range(start_epoch, last_epoch):
            try:
                result, global_step = train_one_epoch(
                    parts, loader_a, epoch=epoch, arch_active=epoch >= args.alpha_epoch,
                    device=device, global_step=global_step,
                    writer=run.writer, show_progress=dist_info.is_main,
                    progress=progress if epoch == start_epoch else None,
                    after_step=lambda step, position: run.after_step(
                        model, step, position, position.batch == len(loader_a)))
                check_finite(model, global_step)
            except NonFiniteLoss as err:
                raise diverged_error(err, run.checkpoint_path, "--lr or --arch-lr") from err
            if dist_info.distributed:
                checksum = check_replicas_in_sync(model)  # raises if a process diverged
                log.info("weights, alphas and betas identical on all %d processes (checksum "
                         "%.6f)", dist_info.world_size, checksum)
                broadcast_buffers(model)  # rank 0's BN statistics: validated and saved
            validate = val_loader is not None and (
                (epoch + 1) % args.eval_interval == 0 or epoch + 1 == args.epochs)
            metrics = evaluate(model, val_loader, info.num_classes, device,
                               show_progress=dist_info.is_main,
                               autocast=parts.autocast) if validate else None
            is_best = metrics is not None and metrics["miou"] > best_miou
            best_miou = max(best_miou, metrics["miou"]) if metrics else best_miou
            if run.out_dir is not None:
                report_epoch(model, epoch, args.epochs, result, metrics,
                             float(parts.weight_optimizer.param_groups[0]["lr"]),
                             parts.architect.stats.summary(), run.metrics_csv, run.writer)
            run.end_interval(global_step, is_best)
    finally:
        run.close()
    if run.out_dir is not None:
        log.info("search done: %s (decode with: python decode_autodeeplab.py --resume %s)",
                 run.out_dir, run.checkpoint_path)
    return run.out_dir


if __name__ == "__main__":
    size_primitive_cache()  # before any convolution: oneDNN reads it once
    preload_fast_allocator()  # tcmalloc when installed: re-executes once, before any work
    main(get_args_parser().parse_args())
