"""What train_autodeeplab.py builds before it searches, and what it reports after each epoch:
the data with its A/B split, the supernet with its two optimisers (`SearchParts`, saved and
restored as one), and the epoch's line, metrics.csv row and TensorBoard entries."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import Subset

from dataloaders import IGNORE_INDEX, build_dataset, build_loader, derive_seed
from engine.cuda_graphs import (WARMUP_CALLS, GraphedStep, graph_search_steps,
                                portable_optimizer_state, prepare_optimizers)
from engine.search import (Architect, BStream, split_train_set, weight_step,
                           weight_step_tensors)
from modeling.decoding import (arch_probabilities, decode_margins, genotype_from_probabilities,
                               mean_entropies)
from modeling.supernet import AutoDeepLabSearch, SupernetConfig
from utils.amp import amp_context, load_scaler_state
from utils.distributed import DistInfo, rank_share, shard_sampler
from utils.errors import UserError
from utils.lr_scheduler import cosine_schedule

log = logging.getLogger("search")
# Seed streams of the loaders, so A and B never share shuffles or augmentations.
STREAM_A, STREAM_B, STREAM_VAL = 1, 2, 3


def _data_options(args) -> dict:
    return dict(data_root=args.data_root, crop_size=args.crop_size, resize=args.resize,
                seed=args.seed, max_samples=args.max_samples, use_sbd=args.use_sbd)


def build_val_set(args):
    """The validation images of a search with flags `args` (whole images, not augmented):
    what its val mIoU is measured on."""
    return build_dataset(args.dataset, "val", train=False, image_size=args.image_size,
                         **_data_options(args))


def build_data(args, device, dist_info: DistInfo, split=None):
    """Train set with its A/B split and loaders, and the validation loader (or None).

    Under torchrun every process makes the same split and loads its own share of A, of B
    (reshuffled every pass) and of the validation images."""
    train_set = build_dataset(args.dataset, "train", train=True, num_samples=args.num_samples,
                              image_size=args.image_size, **_data_options(args))
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
        val_loader = build_loader(rank_share(build_val_set(args), dist_info), batch_size=1,
                                  shuffle=False, workers=args.workers,
                                  device=device, drop_last=False,
                                  seed=derive_seed(args.seed, STREAM_VAL))
    split = {"num_train": len(train_set), "seed": args.seed,
             "a": torch.from_numpy(a_idx), "b": torch.from_numpy(b_idx)}
    return train_set.info, split, loader_a, loader_b, val_loader


@dataclass
class SearchParts:
    """The supernet and everything that trains it, saved and restored together."""

    model: AutoDeepLabSearch
    criterion: nn.Module
    weight_optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    architect: Architect
    b_stream: BStream
    autocast: object
    weight_scaler: torch.amp.GradScaler
    arch_scaler: torch.amp.GradScaler
    grad_clip: float
    # --cuda-graphs: the two steps as CUDA graphs (`capture_steps`), else None
    graphed_steps: tuple[GraphedStep, GraphedStep] | None = None

    @classmethod
    def build(cls, args, num_classes: int, steps_per_epoch: int, loader_b,
              device: torch.device) -> "SearchParts":
        config = SupernetConfig(num_classes=num_classes, num_layers=args.num_layers,
                                filter_multiplier=args.filter_multiplier,
                                block_multiplier=args.block_multiplier, steps=args.steps,
                                partial_channels=args.partial_channels,
                                implementation=args.supernet)
        model = AutoDeepLabSearch(config, checkpoint_cells=args.checkpoint_cells).to(device)
        model.set_skip_dropout(args.skip_dropout)
        criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        # fused: one kernel over the supernet's 2,871 weight tensors (F=8) instead of
        # torch's per-tensor loop on the CPU.
        weight_optimizer = torch.optim.SGD(model.weight_parameters(), lr=args.lr,
                                           momentum=args.momentum,
                                           weight_decay=args.weight_decay, fused=True)
        scheduler = cosine_schedule(weight_optimizer, args.epochs * steps_per_epoch,
                                    args.min_lr)
        # fp16: one loss scale for the weight step and one for the architecture step (bf16
        # and float32: disabled scalers, which pass everything through)
        # A captured step must not reuse autocast's per-step cache of cast weights.
        autocast, weight_scaler = amp_context(args.amp, args.amp_dtype, device,
                                              cache=not args.cuda_graphs)
        arch_scaler = torch.amp.GradScaler("cuda", enabled=weight_scaler.is_enabled())
        architect = Architect(model, criterion, args.arch_lr, args.arch_weight_decay, autocast,
                              arch_scaler, beta_decay=args.beta_decay, epochs=args.epochs)
        return cls(model, criterion, weight_optimizer, scheduler, architect, BStream(loader_b),
                   autocast, weight_scaler, arch_scaler, args.grad_clip)

    def capture_steps(self, device: torch.device) -> None:
        """--cuda-graphs: run both steps as CUDA graphs from now on (after any checkpoint
        was loaded; engine/cuda_graphs.py)."""
        log.info("--cuda-graphs: both steps become CUDA graphs after %d eager ones "
                 "(experimental: not yet verified on a GPU, docs/gpus.md)", WARMUP_CALLS)
        prepare_optimizers(self.weight_optimizer, self.architect.optimizer, device)
        self.graphed_steps = graph_search_steps(
            lambda images, targets: weight_step_tensors(
                self.model, self.criterion, self.weight_optimizer, self.architect.weight_params,
                images, targets, self.grad_clip, self.autocast), self.architect)

    def weight_step(self, images: torch.Tensor, targets: torch.Tensor) -> float:
        """One weight step on an A batch (`engine.search.weight_step`); returns its loss."""
        if self.graphed_steps is not None:
            return self.graphed_steps[0](images, targets).item()
        return weight_step(self.model, self.criterion, self.weight_optimizer,
                           self.architect.weight_params, images, targets, self.grad_clip,
                           self.autocast, self.weight_scaler)

    def arch_step(self, images: torch.Tensor, targets: torch.Tensor, epoch: int) -> float:
        """One architecture step on a B batch (`Architect.step`); returns its loss."""
        if self.graphed_steps is not None:
            return self.architect.record(*self.graphed_steps[1](images, targets))
        return self.architect.step(images, targets, epoch)

    def state_dict(self) -> dict:
        """The checkpoint entries of the supernet and its training."""
        return {"model": self.model.state_dict(), "model_args": self.model.model_args(),
                "weight_optimizer": portable_optimizer_state(self.weight_optimizer.state_dict()),
                "arch_optimizer": portable_optimizer_state(
                    self.architect.optimizer.state_dict()),
                "scheduler": self.scheduler.state_dict(), "b_passes": self.b_stream.passes,
                "b_consumed": self.b_stream.consumed,
                "arch_stats": self.architect.stats.state_dict(),
                "weight_scaler": self.weight_scaler.state_dict(),
                "arch_scaler": self.arch_scaler.state_dict(),
                "genotype": self.model.genotype().to_json()}

    def load_state_dict(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.weight_optimizer.load_state_dict(checkpoint["weight_optimizer"])
        self.architect.optimizer.load_state_dict(checkpoint["arch_optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.b_stream.passes = checkpoint["b_passes"]
        self.b_stream.consumed = checkpoint.get("b_consumed", 0)
        self.architect.stats.load_state_dict(checkpoint["arch_stats"])
        load_scaler_state(self.weight_scaler, checkpoint.get("weight_scaler", {}))
        load_scaler_state(self.arch_scaler, checkpoint.get("arch_scaler", {}))

    def describe(self) -> str:
        config = self.model.config
        partial = (f" partial channels K={config.partial_channels}"
                   if config.partial_channels > 1 else "")
        n_weights = sum(p.numel() for p in self.model.weight_parameters())
        return (f"{config.implementation} supernet F={config.filter_multiplier} "
                f"B={config.block_multiplier} steps={config.steps} L={config.num_layers}"
                f"{partial}: {n_weights / 1e6:.2f}M weights")


def report_epoch(model, epoch: int, epochs: int, result, metrics: dict | None, lr: float,
                 arch_stats: dict, metrics_csv, writer) -> None:
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
