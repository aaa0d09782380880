"""The bilevel search loop (paper section 4.1): weights on half A, architecture on half B."""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from dataloaders import IGNORE_INDEX
from engine.arch_stats import ArchStats
from engine.divergence import NonFiniteLoss
from utils.distributed import average_gradients
from utils.metrics import ConfusionMatrix

log = logging.getLogger(__name__)


# A disabled GradScaler: scale, unscale_, step and update pass straight through (float32, bf16).
_PASS_THROUGH = torch.amp.GradScaler("cuda", enabled=False)


def split_train_set(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint halves A (weights) and B (architecture) of a seeded permutation.

    The split is stored in the checkpoint, so a resumed run keeps it whatever the seed.
    """
    if num_samples < 2:
        raise ValueError("the training split needs at least two images to make halves A and B")
    perm = np.random.default_rng(seed).permutation(num_samples)
    half = num_samples // 2
    return np.sort(perm[:half]), np.sort(perm[half:])


def beta_decay_weight(final: float, epoch: int, epochs: int) -> float:
    """The weight of the Beta-Decay term in `epoch` (0-based) of a search of `epochs`: it
    grows linearly from 0 in the first epoch towards `final` (beta-DARTS, Ye et al., CVPR
    2022; its released code adds 0.5 per epoch)."""
    return final * epoch / epochs


def beta_decay(alphas: torch.Tensor) -> torch.Tensor:
    """beta-DARTS' Beta-Decay regulariser of the cell's operation logits (E, ops): the mean
    over the edges of the log-sum-exp of each edge's logits. Its gradient on each logit is
    that operation's softmax weight over E, so it pulls hardest on the operations that
    lead, which keeps the mixing weights from running away (the paper argues it against
    the collapse to parameter-free operations). Not the network-level betas."""
    return torch.logsumexp(alphas.float(), dim=-1).mean()


class Architect:
    """Owns the architecture optimiser and its one first-order step (DARTS; paper section 4.1),
    with beta-DARTS' regulariser on the alphas when `beta_decay` > 0 (not in the paper)."""

    def __init__(self, model, criterion, lr: float, weight_decay: float,
                 autocast=nullcontext, scaler: torch.amp.GradScaler | None = None,
                 beta_decay: float = 0.0, epochs: int = 1):
        self.model = model
        self.criterion = criterion
        self.beta_decay, self.epochs = beta_decay, epochs  # the final weight and the schedule
        self.autocast = autocast  # --amp: torch.autocast on CUDA
        # fp16 loss scaling of the architecture step, its own scale (a disabled scaler passes
        # everything through)
        self.scaler = scaler or _PASS_THROUGH
        names = [name for name, _ in model.named_arch_parameters()]
        self.arch_params = model.arch_parameters()
        self.weight_params = model.weight_parameters()
        self.stats = ArchStats(names)  # gradient norms, signal-to-noise, update sizes
        # The paper gives Adam's lr and weight decay only; its moment decays are Adam's own
        # defaults (DARTS' 0.5 for the first moment is not in Auto-DeepLab's text).
        self.optimizer = torch.optim.Adam(self.arch_params, lr=lr, weight_decay=weight_decay)

    def step(self, images: torch.Tensor, targets: torch.Tensor, epoch: int = 0) -> float:
        """One Adam step of alphas and betas on a B batch, in search epoch `epoch` (0-based;
        it sets the Beta-Decay weight); gradients of nothing else (averaged over the
        processes under torchrun). Returns the B batch's loss, without the regulariser."""
        return self.record(*self.step_tensors(images, targets, epoch))

    def step_tensors(self, images: torch.Tensor, targets: torch.Tensor, epoch: int = 0):
        """`step` without a host synchronisation, so that it can be captured as a CUDA graph
        (`engine.cuda_graphs`): (the loss, the architecture gradients, Adam's updates), all
        tensors, for `record`."""
        self.optimizer.zero_grad(set_to_none=True)
        # The weights are constants here: autograd then records nothing that only their
        # gradients would need (less work and memory), custom functions included.
        trainable = [p for p in self.weight_params if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            with self.autocast():
                loss = self.criterion(self.model(images), targets)
            weight = beta_decay_weight(self.beta_decay, epoch, self.epochs)
            total = loss + weight * beta_decay(self.model.alphas) if weight else loss
            self.scaler.scale(total).backward(inputs=self.arch_params)
        finally:
            for p in trainable:
                p.requires_grad_(True)
        average_gradients(self.arch_params)
        self.scaler.unscale_(self.optimizer)  # the statistics need the true gradients
        before = [p.detach().clone() for p in self.arch_params]
        self.scaler.step(self.optimizer)  # skipped when fp16 overflowed, and the scale lowered
        self.scaler.update()
        return (loss.detach(), [p.grad for p in self.arch_params],
                [p.detach() - b for p, b in zip(self.arch_params, before)])

    def record(self, loss: torch.Tensor, grads, updates) -> float:
        """The statistics of one step (`step_tensors`' results); returns its loss."""
        self.stats.record(grads, updates)
        return loss.item()


@torch.no_grad()
def clip_gradients(params, max_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_(params, max_norm)` for parameters on one device: the
    same arithmetic, bit for bit, in five operator calls. torch's moves each tensor's norm to
    the first device one call at a time: 2,871 calls per weight step of the F = 8 supernet,
    each costing host time (docs/gpus.md)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))


def weight_step(model, criterion, optimizer, weights, images, targets, grad_clip: float,
                autocast=nullcontext, scaler: torch.amp.GradScaler | None = None) -> float:
    """One SGD step of the weights on an A batch; gradients of nothing else (averaged over
    the processes under torchrun, before clipping). Returns the loss.

    A non-finite loss skips the update (the caller stops the run). With an enabled `scaler`
    (fp16) the loss is scaled for the backward pass and the gradients unscaled before
    clipping; a step whose scaled gradients overflowed is skipped and the scale lowered."""
    with autocast():
        loss = criterion(model(images), targets)
    if torch.isfinite(loss):
        update_weights(loss, optimizer, weights, grad_clip, scaler)
    return loss.item()


def weight_step_tensors(model, criterion, optimizer, weights, images, targets,
                        grad_clip: float, autocast=nullcontext) -> torch.Tensor:
    """`weight_step` without a host synchronisation, so that it can be captured as a CUDA
    graph (`engine.cuda_graphs`; no loss scaling there): returns the loss as a tensor, and
    updates the weights whatever it is (a non-finite loss stops the run all the same)."""
    with autocast():
        loss = criterion(model(images), targets)
    update_weights(loss, optimizer, weights, grad_clip, None)
    return loss.detach()


def update_weights(loss: torch.Tensor, optimizer, weights, grad_clip: float,
                   scaler: torch.amp.GradScaler | None) -> None:
    """The backward pass of `loss` to `weights`, their clipping and the optimiser's step."""
    scaler = scaler or _PASS_THROUGH
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward(inputs=weights)
    average_gradients(weights)
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        clip_gradients(weights, grad_clip)
    scaler.step(optimizer)
    scaler.update()


@dataclass
class EpochResult:
    train_loss: float
    arch_loss: float  # nan when no architecture step ran
    seconds: float


class BStream:
    """A persistent iterator over half B: one pass per search epoch, reopened only when B
    runs out before A does. `passes` counts opened passes and `consumed` the batches taken
    from the current one; both are saved, so a resume reopens the same pass at the same batch.
    """

    def __init__(self, loader, passes: int = 0, consumed: int = 0):
        self.loader = loader
        self.passes = passes
        self.consumed = consumed
        self._it = None

    def _open(self, pass_index: int, start_batch: int) -> None:
        self.loader.set_epoch(pass_index, start_batch=start_batch)
        self.consumed = start_batch
        self._it = iter(self.loader)

    def new_pass(self):
        self._open(self.passes, 0)
        self.passes += 1

    def next(self):
        if self._it is None:
            if self.passes == 0:
                self.new_pass()
            else:  # restored from a checkpoint: continue the pass it was in
                self._open(self.passes - 1, self.consumed)
        try:
            batch = next(self._it)
        except StopIteration:
            self.new_pass()
            batch = next(self._it)
        self.consumed += 1
        return batch

    def state_dict(self) -> dict:
        return {"passes": self.passes, "consumed": self.consumed}


@dataclass
class EpochProgress:
    """How far a search epoch got: A batches done and the running sums of its losses.

    Saved in mid-epoch checkpoints, so that a resumed epoch continues at the next batch and
    reports the means an uninterrupted epoch would have.
    """

    batch: int = 0
    loss_sum: float = 0.0
    arch_sum: float = 0.0
    arch_steps: int = 0
    seconds: float = 0.0

    def state_dict(self) -> dict:
        return dict(vars(self))


def train_one_epoch(parts, loader_a, *, epoch: int, arch_active: bool, device: torch.device,
                    global_step: int, writer=None,
                    progress: EpochProgress | None = None, after_step=None,
                    show_progress: bool = True) -> tuple[EpochResult, int]:
    """One search epoch of `parts` (`engine.search_setup.SearchParts`): per A batch a weight
    step, then (when `arch_active`) an architecture step on the next B batch. Returns the
    epoch's mean losses and the new global step.

    `progress` (from a mid-epoch checkpoint) continues the epoch after its first
    `progress.batch` batches, which are skipped without being loaded; B then continues
    where the B stream was saved. `after_step(global_step, progress)` runs after every
    iteration (checkpoints, stop requests); it may raise to end the epoch there.
    """
    model, architect, b_stream = parts.model, parts.architect, parts.b_stream
    weight_optimizer, scheduler = parts.weight_optimizer, parts.scheduler
    model.train()
    progress = progress or EpochProgress()
    resumed = progress.batch > 0
    loader_a.set_epoch(epoch, start_batch=progress.batch)
    if not resumed:  # a resumed epoch's statistics come from its checkpoint
        architect.stats.reset()
    if arch_active and not resumed:
        b_stream.new_pass()
    start = time.time() - progress.seconds
    bar = tqdm(loader_a, desc=f"search epoch {epoch}", leave=False,
               disable=None if show_progress else True,
               dynamic_ncols=True, initial=progress.batch)
    for images, targets in bar:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        loss = parts.weight_step(images, targets)
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"weight loss is {loss} at iteration {global_step} "
                                f"(epoch {epoch})")
        scheduler.step()
        progress.loss_sum += loss
        progress.batch += 1
        postfix = {"loss": f"{progress.loss_sum / progress.batch:.3f}"}
        if arch_active:
            images_b, targets_b = b_stream.next()
            arch_loss = parts.arch_step(images_b.to(device, non_blocking=True),
                                        targets_b.to(device, non_blocking=True), epoch)
            if not math.isfinite(arch_loss):
                raise NonFiniteLoss(f"architecture loss is {arch_loss} at iteration "
                                    f"{global_step} (epoch {epoch})")
            progress.arch_sum += arch_loss
            progress.arch_steps += 1
            postfix["arch"] = f"{progress.arch_sum / progress.arch_steps:.3f}"
            if writer is not None:
                for key, value in architect.stats.last.items():
                    writer.add_scalar(f"arch_step/{key}", value, global_step)
        if writer is not None:
            writer.add_scalar("train/loss", loss, global_step)
            writer.add_scalar("train/lr", float(weight_optimizer.param_groups[0]["lr"]),
                              global_step)
        global_step += 1
        bar.set_postfix(postfix)
        if after_step is not None:
            progress.seconds = time.time() - start
            after_step(global_step, progress)
    bar.close()
    arch_mean = progress.arch_sum / progress.arch_steps if progress.arch_steps else float("nan")
    return EpochResult(progress.loss_sum / max(progress.batch, 1), arch_mean,
                       time.time() - start), global_step


@torch.inference_mode()
def evaluate(model, loader, num_classes: int, device: torch.device,
             show_progress: bool = True, autocast=nullcontext) -> dict:
    """Confusion-matrix metrics of `model` on `loader` (whole images), summed over the
    processes under torchrun (each with its share of the images)."""
    model.eval()
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX, device=device)
    for images, targets in tqdm(loader, desc="validate", leave=False,
                                disable=None if show_progress else True):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast():
            logits = model(images)
        cm.update(targets, logits.argmax(1))
    cm.all_reduce()
    return cm.compute()
