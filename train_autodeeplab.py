"""Auto-DeepLab architecture search (paper sections 3 and 4.1).

    python train_autodeeplab.py --dataset synthetic
    CUDA_VISIBLE_DEVICES=0 python train_autodeeplab.py --dataset camvid --data-root DIR
    python train_autodeeplab.py --resume RUN/checkpoint.pth.tar
    torchrun --nproc_per_node=4 train_autodeeplab.py --dataset camvid --data-root DIR
"""
from __future__ import annotations

import logging
import math
import sys

import torch
import torch.nn as nn
from torch.utils.data import Subset

from config_utils.common import resume_args
from config_utils.search_args import (ARCH_KEYS, CURRENT_KEYS, RESUME_SAFE_KEYS, check_args,
                                      explicit_keys, get_args_parser, resolve_defaults)
from dataloaders import IGNORE_INDEX, build_dataset, build_loader, dataset_info, derive_seed
from engine.divergence import NonFiniteLoss, check_finite, diverged_error
from engine.search import (Architect, BStream, EpochProgress, evaluate, split_train_set,
                           train_one_epoch)
from engine.search_checkpoint import searched_over
from modeling.decoding import (arch_probabilities, decode_margins, genotype_from_probabilities,
                               mean_entropies)
from modeling.operations import PRIMITIVES
from modeling.supernet import AutoDeepLabSearch, SupernetConfig
from utils.allocator import allocator_in_use, preload_fast_allocator
from utils.onednn import size_primitive_cache
from utils.amp import amp_context, load_scaler_state
from utils.checkpoint import (SEARCH_KIND, SEARCH_VERSION, save_checkpoint, save_with_best,
                              write_json)
from utils.distributed import (DistInfo, agreed_stop, broadcast_buffers,
                               check_replicas_in_sync, init_distributed, rank_share,
                               run_then_leave, shard_sampler, stop_if_requested)
from utils.errors import UserError, exit_on_user_error
from utils.interrupt import Interrupted, StopSignals
from utils.lr_scheduler import cosine_schedule
from utils.run import (MetricsCSV, args_to_json, prepare_run_dir, release_run_dir, rng_state,
                       seed_everything, select_device, set_rng_state, setup_logging,
                       summary_writer, tune_for_fixed_shapes)

log = logging.getLogger("search")
# Seed streams of the two loaders, so A and B never share shuffles or augmentations.
STREAM_A, STREAM_B, STREAM_VAL = 1, 2, 3


def build_data(args, device, dist_info: DistInfo, split=None):
    """Train set with its A/B split and loaders, and the validation loader (or None).

    Under torchrun every process makes the same split and loads its own share of A, of B
    (reshuffled every pass) and of the validation images."""
    common = dict(data_root=args.data_root, crop_size=args.crop_size, resize=args.resize,
                  seed=args.seed, max_samples=args.max_samples, use_sbd=args.use_sbd)
    train_set = build_dataset(args.dataset, "train", train=True, num_samples=args.num_samples,
                              image_size=args.image_size, **common)
    if split is None:
        per_half = args.batch_size * dist_info.world_size  # one batch per process
        if len(train_set) < 2 * per_half:
            raise UserError(f"the train split has {len(train_set)} images; halves A and B need "
                            f"at least {per_half} each: lower --batch-size")
        a_idx, b_idx = split_train_set(len(train_set), args.seed)
    else:
        if split["num_train"] != len(train_set):
            raise UserError(f"the train split now has {len(train_set)} images but the "
                            f"checkpoint's A/B split was made for {split['num_train']}; "
                            "resume with the same data and --max-samples")
        a_idx, b_idx = split["a"].numpy(), split["b"].numpy()
    loader_args = dict(batch_size=args.batch_size, shuffle=True, workers=args.workers,
                       device=device, drop_last=True)
    half_a = Subset(train_set, a_idx.tolist())
    seed_a = derive_seed(args.seed, STREAM_A)
    loader_a = build_loader(half_a, seed=seed_a, sampler=shard_sampler(half_a, dist_info, seed_a),
                            **loader_args)
    # B gets a twin of the dataset: its own augmentation seed, so that the two loaders'
    # set_epoch calls never change each other's augmentations.
    half_b = Subset(train_set.twin(), b_idx.tolist())
    seed_b = derive_seed(args.seed, STREAM_B)
    loader_b = build_loader(half_b, seed=seed_b, sampler=shard_sampler(half_b, dist_info, seed_b),
                            **loader_args)
    val_loader = None
    if not args.no_val:
        val_set = build_dataset(args.dataset, "val", train=False, image_size=args.image_size,
                                **common)
        val_loader = build_loader(rank_share(val_set, dist_info), batch_size=1,
                                  shuffle=False, workers=args.workers,
                                  device=device, drop_last=False,
                                  seed=derive_seed(args.seed, STREAM_VAL))
    split = {"num_train": len(train_set), "seed": args.seed,
             "a": torch.from_numpy(a_idx), "b": torch.from_numpy(b_idx)}
    return train_set.info, split, loader_a, loader_b, val_loader


def report_epoch(model, epoch: int, epochs: int, result, metrics: dict | None, lr: float,
                 arch_stats: dict, metrics_csv: MetricsCSV, writer) -> None:
    """The epoch's line in the log, its row in metrics.csv, its scalars and figures.

    `arch_stats`: the epoch's architecture-gradient summary (`ArchStats.summary`)."""
    from engine.visualize_arch import alpha_figure, beta_figure

    weights, probs = arch_probabilities(model.alphas, model.betas, model.edge_logits)
    genotype = genotype_from_probabilities(weights, probs)
    alpha_h, _, beta_h, _ = mean_entropies(weights, probs)
    margins = decode_margins(weights, probs)
    miou = metrics["miou"] if metrics else float("nan")
    log.info("epoch %d/%d: loss %.4f, arch loss %.4f, val mIoU %.4f, entropy alpha %.3f "
             "beta %.3f, %.1fs, path %s", epoch + 1, epochs, result.train_loss,
             result.arch_loss, miou, alpha_h, beta_h, result.seconds, genotype.network_path)
    if math.isfinite(arch_stats["alphas_grad_norm"]):  # architecture steps ran
        log.info("  architecture: gradient SNR alphas %.3f betas %.3f; Adam's mean update "
                 "alphas %.2e betas %.2e; path %.3g times as likely as the next; chosen "
                 "operations lead the next by %.4f (min %.4f)", arch_stats["alphas_grad_snr"],
                 arch_stats["betas_grad_snr"], arch_stats["alphas_update"],
                 arch_stats["betas_update"], margins["path_margin"], margins["op_gap_mean"],
                 margins["op_gap_min"])
    metrics_csv.append({
        "epoch": epoch + 1, "train_loss": result.train_loss, "arch_loss": result.arch_loss,
        "lr": lr, "val_miou": miou, "val_pixel_acc": metrics["pixel_acc"] if metrics else "",
        "val_fwiou": metrics["fwiou"] if metrics else "", "alpha_entropy": alpha_h,
        "beta_entropy": beta_h, **arch_stats, **margins, "seconds": result.seconds,
        "network_path": " ".join(map(str, genotype.network_path))})
    scalars = [("val/mIoU", miou), ("arch/alpha_entropy", alpha_h),
               ("arch/beta_entropy", beta_h), ("train/epoch_loss", result.train_loss),
               ("train/arch_loss", result.arch_loss)]
    scalars += [(f"arch/{key}", value) for key, value in {**arch_stats, **margins}.items()]
    for tag, value in scalars:
        if math.isfinite(value):  # no val or no arch step this epoch: nothing to plot
            writer.add_scalar(tag, value, epoch + 1)
    writer.add_figure("arch/alphas", alpha_figure(
        model.normalized_alphas().detach().cpu().numpy(), model.config.steps), epoch + 1)
    writer.add_figure("arch/betas", beta_figure(
        model.normalized_betas().detach().cpu().numpy()), epoch + 1)
    writer.flush()


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
    tune_for_fixed_shapes(device)
    dataset_info(args.dataset, args.data_root)  # an unknown name fails here, before any writing
    # Data problems are found before the run folder is made, so a typo leaves no debris.
    info, split, loader_a, loader_b, val_loader = build_data(
        args, device, dist_info, checkpoint["split"] if checkpoint else None)
    if checkpoint is not None and checkpoint["model_args"]["num_classes"] != info.num_classes:
        raise UserError(f"checkpoint {args.resume} was searched with "
                        f"{checkpoint['model_args']['num_classes']} classes but dataset "
                        f"{args.dataset} now has {info.num_classes}; start a new run")
    out_dir = None
    if dist_info.is_main:  # only rank 0 writes the run folder
        out_dir = prepare_run_dir(args.out_dir, args.resume, args.dataset, "search")
    try:
        with StopSignals() as stop:
            return search(args, checkpoint, out_dir, device, dist_info, info, split, loader_a,
                          loader_b, val_loader, stop)
    finally:
        if out_dir is not None:
            release_run_dir(out_dir)


def search(args, checkpoint, out_dir, device, dist_info, info, split, loader_a, loader_b,
           val_loader, stop):
    """The search proper; rank 0 writes the prepared run folder `out_dir` (None elsewhere)."""
    if out_dir is not None:
        args.out_dir = str(out_dir)
        setup_logging(out_dir / "search.log")
    else:
        setup_logging(None, logging.WARNING)
    log.info("command: %s", " ".join(sys.argv))
    log.info("memory allocator: %s; oneDNN primitive cache: %s", allocator_in_use(),
             size_primitive_cache())
    log.info("dataset %s: %d classes, A %d / B %d images, %d steps per epoch of batch %d x %d "
             "processes, device %s", args.dataset, info.num_classes, len(split["a"]),
             len(split["b"]), len(loader_a), args.batch_size, dist_info.world_size, device)
    torch.autograd.set_detect_anomaly(args.detect_anomaly)

    config = SupernetConfig(num_classes=info.num_classes, num_layers=args.num_layers,
                            filter_multiplier=args.filter_multiplier,
                            block_multiplier=args.block_multiplier, steps=args.steps,
                            partial_channels=args.partial_channels,
                            implementation=args.supernet)
    model = AutoDeepLabSearch(config, checkpoint_cells=args.checkpoint_cells).to(device)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    # fused: one kernel over the supernet's 2,871 weight tensors (F=8) instead of torch's
    # per-tensor loop on the CPU (0.11 -> 0.05 s a call on one thread; a whole step is too
    # noisy to show it).
    weight_optimizer = torch.optim.SGD(model.weight_parameters(), lr=args.lr,
                                       momentum=args.momentum, weight_decay=args.weight_decay,
                                       fused=True)
    scheduler = cosine_schedule(weight_optimizer, args.epochs * len(loader_a), args.min_lr)
    # fp16: one loss scale for the weight step and one for the architecture step (bf16 and
    # float32: disabled scalers, which pass everything through)
    autocast, weight_scaler = amp_context(args.amp, args.amp_dtype, device)
    arch_scaler = torch.amp.GradScaler("cuda", enabled=weight_scaler.is_enabled())
    architect = Architect(model, criterion, args.arch_lr, args.arch_weight_decay, autocast,
                          arch_scaler)
    b_stream = BStream(loader_b)
    start_epoch, global_step, best_miou, progress, metrics = 0, 0, -math.inf, None, None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        weight_optimizer.load_state_dict(checkpoint["weight_optimizer"])
        architect.optimizer.load_state_dict(checkpoint["arch_optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch, global_step = checkpoint["epoch"], checkpoint["global_step"]
        best_miou, metrics = checkpoint["best_miou"], checkpoint["metrics"]
        b_stream.passes = checkpoint["b_passes"]
        b_stream.consumed = checkpoint.get("b_consumed", 0)
        architect.stats.load_state_dict(checkpoint["arch_stats"])
        load_scaler_state(weight_scaler, checkpoint.get("weight_scaler", {}))
        load_scaler_state(arch_scaler, checkpoint.get("arch_scaler", {}))
        if checkpoint.get("position"):
            progress = EpochProgress(**checkpoint["position"])
        set_rng_state(checkpoint["rng"])
        log.info("resumed from %s at epoch %d, batch %d (step %d)", args.resume, start_epoch,
                 progress.batch if progress else 0, global_step)
    n_weights = sum(p.numel() for p in model.weight_parameters())
    log.info("%s supernet F=%d B=%d steps=%d L=%d%s: %.2fM weights", config.implementation,
             config.filter_multiplier, config.block_multiplier, config.steps, config.num_layers,
             f" partial channels K={config.partial_channels}" if config.partial_channels > 1
             else "", n_weights / 1e6)
    writer = metrics_csv = checkpoint_path = None
    if out_dir is not None:
        write_json(args_to_json(args), out_dir / "args.json")
        writer = summary_writer(out_dir)
        metrics_csv = MetricsCSV(out_dir / "metrics.csv")
        metrics_csv.truncate_after(start_epoch)  # rows past the checkpoint
        checkpoint_path = out_dir / "checkpoint.pth.tar"

    def state(epochs_done: int, position: EpochProgress | None) -> dict:
        """Everything a resume needs; `position` is where a mid-epoch checkpoint stands."""
        return {"kind": SEARCH_KIND, "version": SEARCH_VERSION,
                "model": model.state_dict(), "model_args": model.model_args(),
                "primitives": list(PRIMITIVES),
                "weight_optimizer": weight_optimizer.state_dict(),
                "arch_optimizer": architect.optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epochs_done,
                "position": position.state_dict() if position else None,
                "global_step": global_step, "b_passes": b_stream.passes,
                "b_consumed": b_stream.consumed, "split": split, "rng": rng_state(),
                "arch_stats": architect.stats.state_dict(),
                "weight_scaler": weight_scaler.state_dict(),
                "arch_scaler": arch_scaler.state_dict(),
                "args": args_to_json(args), "best_miou": best_miou, "metrics": metrics,
                "genotype": model.genotype().to_json(), "dataset": args.dataset,
                "world_size": dist_info.world_size}

    def after_step(position: EpochProgress, step: int) -> None:
        nonlocal global_step
        global_step = step
        requested = agreed_stop(stop.requested, dist_info, device)
        due = args.checkpoint_interval and step % args.checkpoint_interval == 0 \
            and position.batch < len(loader_a)  # the epoch's end writes its own
        if (due or requested) and checkpoint_path is not None:
            check_finite(model, step)
            save_checkpoint(state(epoch, position), checkpoint_path)
        if requested:
            raise Interrupted(requested, checkpoint_path)

    last_epoch = args.epochs if args.stop_after_epochs is None else min(
        args.epochs, start_epoch + args.stop_after_epochs)
    try:
        for epoch in range(start_epoch, last_epoch):
            try:
                result, global_step = train_one_epoch(
                    model, criterion, weight_optimizer, scheduler, architect, loader_a,
                    b_stream, epoch=epoch, arch_active=epoch >= args.alpha_epoch,
                    device=device, grad_clip=args.grad_clip, global_step=global_step,
                    writer=writer, after_step=after_step,
                    progress=progress if epoch == start_epoch else None,
                    show_progress=dist_info.is_main, autocast=autocast, scaler=weight_scaler)
                check_finite(model, global_step)
            except NonFiniteLoss as err:
                raise diverged_error(err, checkpoint_path, "--lr or --arch-lr") from err
            if dist_info.distributed:
                checksum = check_replicas_in_sync(model)  # raises if a process diverged
                log.info("weights, alphas and betas identical on all %d processes (checksum "
                         "%.6f)", dist_info.world_size, checksum)
                broadcast_buffers(model)  # rank 0's BN statistics: validated and saved
            validate = val_loader is not None and (
                (epoch + 1) % args.eval_interval == 0 or epoch + 1 == args.epochs)
            metrics = evaluate(model, val_loader, info.num_classes, device,
                               show_progress=dist_info.is_main,
                               autocast=autocast) if validate else None
            is_best = metrics is not None and metrics["miou"] > best_miou
            best_miou = max(best_miou, metrics["miou"]) if metrics else best_miou
            if out_dir is not None:
                report_epoch(model, epoch, args.epochs, result, metrics,
                             weight_optimizer.param_groups[0]["lr"],
                             architect.stats.summary(), metrics_csv, writer)
                save_with_best(state(epoch + 1, None), checkpoint_path, is_best)
            stop_if_requested(stop, dist_info, device, checkpoint_path)
    finally:
        if writer is not None:
            writer.close()
    if out_dir is not None:
        log.info("search done: %s (decode with: python decode_autodeeplab.py --resume %s)",
                 out_dir, checkpoint_path)
    return out_dir


if __name__ == "__main__":
    size_primitive_cache()  # before any convolution: oneDNN reads it once
    preload_fast_allocator()  # tcmalloc when installed: re-executes once, before any work
    main(get_args_parser().parse_args())
