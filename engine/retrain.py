"""Retraining pieces (paper section 4): where the architecture comes from, the losses, the
training steps, inference (sliding window, scales, flip) and evaluation."""
from __future__ import annotations

import logging
import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from dataloaders import IGNORE_INDEX
from engine.divergence import NonFiniteLoss
from engine.genotype_io import load_genotype
from modeling.genotypes import GENOTYPES, Genotype
from modeling.search_space import DIRECTIONS, NUM_LEVELS
from modeling.retrain_net import AutoDeepLab
from utils.checkpoint import RETRAIN_KIND, load_checkpoint
from utils.errors import UserError
from utils.metrics import ConfusionMatrix

log = logging.getLogger(__name__)

PAPER_GENOTYPE = "autodeeplab"
OHEM_REFERENCE_IMAGES = 8  # --ohem-min-kept counts pixels per this many images
SLIDING_OVERLAP = 1 / 3  # windows overlap by a third of the crop


# --- architecture sources ---------------------------------------------------------------------

def _load_npy(path: str, flag: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{flag} {path} cannot be read as a .npy array ({err})") from err


def path_from_space(space: np.ndarray) -> tuple[int, ...]:
    """Levels of the path a one-hot (L, 4, 3) `network_path_space` array describes."""
    space = np.asarray(space)
    if space.ndim != 3 or space.shape[1:] != (NUM_LEVELS, len(DIRECTIONS)):
        raise UserError(f"network_path_space array must have shape (L, {NUM_LEVELS}, "
                        f"{len(DIRECTIONS)}), got {space.shape}")
    path = []
    for layer in range(space.shape[0]):
        hits = np.argwhere(space[layer] != 0)
        if len(hits) != 1:
            raise UserError(f"network_path_space layer {layer} has {len(hits)} non-zero "
                            f"transitions; a path has exactly one per layer")
        level, direction = hits[0]
        path.append(int(level + DIRECTIONS[direction]))
    return tuple(path)


def resolve_genotype(args) -> Genotype:
    """The Genotype named by exactly one of --genotype, --net-arch, --network-path, --arch.

    --net-arch and --network-path take their cell from --cell-arch or, for --network-path
    only, the paper's cell. Every problem is a one-line UserError naming the flag.
    """
    given = (("--genotype", args.genotype), ("--net-arch", args.net_arch),
             ("--network-path", args.network_path), ("--arch", args.arch))
    sources = [flag for flag, value in given if value is not None]
    if not sources:
        raise UserError("no architecture given; pass --genotype RUN/genotype.json (from "
                        "decode_autodeeplab.py), --net-arch/--network-path with --cell-arch, "
                        "or --arch autodeeplab-s|m|l for the paper's")
    if len(sources) > 1:
        raise UserError(f"{' and '.join(sources)} both name an architecture; pass only one")
    if args.cell_arch is not None and sources[0] in ("--genotype", "--arch"):
        raise UserError(f"--cell-arch goes with --net-arch or --network-path, not {sources[0]}")
    if args.genotype is not None:
        return load_genotype(args.genotype)
    paper = GENOTYPES[PAPER_GENOTYPE]
    if args.arch is not None:
        return paper
    if args.net_arch is not None and args.cell_arch is None:
        raise UserError("--net-arch needs --cell-arch genotype.npy for the cell")
    space = _load_npy(args.net_arch, "--net-arch") if args.net_arch is not None else None
    if args.network_path is not None:
        path = _load_npy(args.network_path, "--network-path")
    else:
        path = np.asarray(path_from_space(space), dtype=np.int64)
    if args.cell_arch is None:
        return Genotype.from_arrays(path, None, paper.to_arrays()[2])
    return Genotype.from_arrays(path, space, _load_npy(args.cell_arch, "--cell-arch"))


# --- losses -----------------------------------------------------------------------------------

class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels only: those whose true-class probability is below
    `thresh`, and at least the `min_kept` hardest (when that many are labelled)."""

    def __init__(self, thresh: float, min_kept: int, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.thresh = thresh
        self.min_kept = max(1, min_kept)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # logits: (N, K, H, W); target: (N, H, W)
        pixel_loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index,
                                     reduction="none").flatten()
        valid = target.flatten() != self.ignore_index
        losses = pixel_loss[valid]
        if losses.numel() == 0:
            return pixel_loss.sum() * 0.0  # keeps the graph; nothing labelled
        with torch.no_grad():
            true_prob = torch.exp(-losses.float())
            kth = min(self.min_kept, losses.numel()) - 1
            threshold = max(self.thresh, torch.kthvalue(true_prob, kth + 1).values.item())
        return losses[true_prob <= threshold].mean()


def build_criterion(kind: str, *, batch_size: int, thresh: float, min_kept: int) -> nn.Module:
    """'ce' or 'ohem'; OHEM's `min_kept` is per OHEM_REFERENCE_IMAGES images, scaled here."""
    if kind == "ce":
        return nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    return OhemCrossEntropy(thresh, min_kept * batch_size // OHEM_REFERENCE_IMAGES)


# --- training ---------------------------------------------------------------------------------

@dataclass
class StepsResult:
    loss: float  # mean training loss of the steps run
    step: int  # global step after them
    seconds: float


@dataclass
class IntervalProgress:
    """Running sums of the steps since the last evaluation; saved in mid-interval
    checkpoints, so that a resumed interval reports the mean an uninterrupted one would."""

    loss_sum: float = 0.0
    steps: int = 0
    seconds: float = 0.0

    def state_dict(self) -> dict:
        return dict(vars(self))


def train_steps(parts, loader, *, step: int, end_step: int, total_steps: int,
                device: torch.device, drop_path_keep_prob: float, writer=None,
                show_progress: bool = True, progress: IntervalProgress | None = None,
                after_step=None) -> StepsResult:
    """Run global steps `step` .. `end_step` - 1 of `parts`
    (`engine.retrain_setup.RetrainParts`).

    Epoch e is the `e`-th pass of `loader` (`set_epoch(e)` makes it a function of the seed
    and e alone); a step in the middle of an epoch starts the loader after that epoch's
    earlier batches without loading them, so a resumed run sees the batches an uninterrupted
    one would. Drop path's drop probability grows linearly with the step, from 0 to
    1 - keep_prob (DARTS / NASNet). `progress` carries the sums of a resumed interval;
    `after_step(step, progress)` runs after every step (checkpoints, stop requests) and may
    raise to end the run there.
    """
    model, optimizer, scaler = parts.model, parts.optimizer, parts.scaler
    model.train()
    steps_per_epoch = len(loader)
    progress = progress or IntervalProgress()
    start = time.time() - progress.seconds
    bar = tqdm(total=end_step - step, desc="train", leave=False, dynamic_ncols=True,
               disable=None if show_progress else True)
    while step < end_step:
        epoch, skip = divmod(step, steps_per_epoch)
        loader.set_epoch(epoch, start_batch=skip)
        for images, targets in loader:
            parts.model_without_ddp.set_drop_path_prob(
                (1.0 - drop_path_keep_prob) * step / total_steps)
            images = images.to(device, non_blocking=True).contiguous(
                memory_format=MEMORY_FORMAT)
            targets = targets.to(device, non_blocking=True)
            with parts.autocast():
                loss = parts.criterion(model(images).float(), targets)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"training loss is {loss.item()} at iteration {step}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            parts.scheduler.step()
            progress.loss_sum += loss.item()
            progress.steps += 1
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{progress.loss_sum / progress.steps:.3f}")
            if after_step is not None:
                progress.seconds = time.time() - start
                after_step(step, progress)
            if step >= end_step:
                break
    bar.close()
    return StepsResult(progress.loss_sum / max(progress.steps, 1), step, time.time() - start)


# --- inference --------------------------------------------------------------------------------

def _windows(length: int, crop: int, stride: int) -> list[int]:
    starts = list(range(0, max(length - crop, 0) + 1, stride))
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts


def sliding_probs(model, image: torch.Tensor, num_classes: int, crop: int | None) -> torch.Tensor:
    """Softmax probabilities (N, K, H, W); images larger than `crop` go through overlapping
    crop x crop windows whose probabilities are averaged (zero padding up to the crop)."""
    n, _, h, w = image.shape
    if crop is None or (h <= crop and w <= crop):
        return model(image).float().softmax(1)
    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    padded = F.pad(image, (0, pad_w, 0, pad_h))
    ph, pw = padded.shape[-2:]
    stride = max(1, math.ceil(crop * (1 - SLIDING_OVERLAP)))
    probs = image.new_zeros(n, num_classes, ph, pw, dtype=torch.float32)
    counts = image.new_zeros(1, 1, ph, pw, dtype=torch.float32)
    for top in _windows(ph, crop, stride):
        for left in _windows(pw, crop, stride):
            window = padded[:, :, top:top + crop, left:left + crop]
            probs[:, :, top:top + crop, left:left + crop] += model(window).float().softmax(1)
            counts[:, :, top:top + crop, left:left + crop] += 1
    return (probs / counts)[:, :, :h, :w]


@torch.inference_mode()
def predict_probs(model, image: torch.Tensor, num_classes: int, *, crop: int | None,
                  scales=(1.0,), flip: bool = False, autocast=nullcontext) -> torch.Tensor:
    """Class probabilities (N, K, H, W) averaged over `scales` (and horizontal flips)."""
    h, w = image.shape[-2:]
    total = image.new_zeros(image.shape[0], num_classes, h, w, dtype=torch.float32)
    for scale in scales:
        scaled = image if scale == 1.0 else F.interpolate(
            image, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
            align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            x = scaled.flip(-1) if flipped else scaled
            with autocast():
                probs = sliding_probs(model, x, num_classes, crop)
            if flipped:
                probs = probs.flip(-1)
            total += F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return total / (len(scales) * (2 if flip else 1))


@torch.inference_mode()
def evaluate(model, loader, num_classes: int, device: torch.device, *, crop: int | None,
             scales=(1.0,), flip: bool = False, autocast=nullcontext,
             show_progress: bool = True) -> dict:
    """Confusion-matrix metrics (summed over processes when distributed) of `model`."""
    model.eval()
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX, device=device)
    for images, targets in tqdm(loader, desc="validate", leave=False,
                                disable=None if show_progress else True):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        probs = predict_probs(model, images, num_classes, crop=crop, scales=scales, flip=flip,
                              autocast=autocast)
        cm.update(targets, probs.argmax(1))
    cm.all_reduce()
    return cm.compute()


def format_metrics(metrics: dict, class_names) -> dict:
    """Metrics as a JSON-able dict with per-class IoU keyed by class name."""
    return {"miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"],
            "mean_acc": metrics["mean_acc"], "fwiou": metrics["fwiou"],
            "per_class_iou": {name: iou for name, iou in zip(class_names,
                                                             metrics["per_class_iou"])}}


# ONNX operator set of --export-onnx: 17 is read by onnxruntime 1.12 and newer.
ONNX_OPSET = 17


def export_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int]) -> None:
    """Write `model` (eval mode) as ONNX for images of `size` (height, width), any batch size.

    The TorchScript exporter (needs only `onnx`) traces the network at this size: the
    resize decisions between levels are shape-dependent, so export at the size you deploy.
    """
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError as err:
        raise UserError("--export-onnx needs the onnx package: pip install onnx") from err
    height, width = size
    if height <= 0 or width <= 0:
        raise UserError(f"--export-size must be positive, got {height} {width}")
    images = torch.zeros(1, 3, height, width)
    with warnings.catch_warnings():
        # The tracer warns at each shape comparison; the docstring says what that means. The
        # TorchScript exporter is chosen on purpose (torch's newer one needs onnxscript too),
        # so its deprecation notice is left out as well.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (images,), str(path), input_names=["images"],
                          output_names=["logits"], dynamo=False, opset_version=ONNX_OPSET,
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    log.info("wrote %s (ONNX opset %d, images of %d x %d, any batch size)", path, ONNX_OPSET,
             height, width)


# The retrained network runs channels-last: oneDNN's (and cuDNN's) convolutions are faster on
# it. Measured on a 2-core CPU, Auto-DeepLab-S: a training step at crop 321, batch 2, 1.3-1.4x
# faster (bench/retrain_step.py --memory-format), inference at 360 x 480 1.5x.
MEMORY_FORMAT = torch.channels_last


def place(model: nn.Module, device) -> nn.Module:
    """`model` on `device`, its weights in the layout the retrained network runs in."""
    return model.to(device, memory_format=MEMORY_FORMAT)


def load_model(path, device, trust: bool = False) -> tuple[AutoDeepLab, dict]:
    """The model of a retrain checkpoint, rebuilt from the file alone (eval mode, on `device`),
    and the checkpoint (`trust` as in `load_checkpoint`)."""
    checkpoint = load_checkpoint(path, kind=RETRAIN_KIND, trust=trust)
    model = AutoDeepLab.from_model_args(checkpoint["model_args"])
    model.load_state_dict(checkpoint["model"])
    return place(model, device).eval(), checkpoint


def image_files(spec: str | os.PathLike) -> list[Path]:
    """Images named by `spec`: one image, a folder (its images, sorted) or a .txt list."""
    spec = Path(spec)
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm"}
    if spec.is_dir():
        files = sorted(p for p in spec.iterdir() if p.suffix.lower() in suffixes)
        if not files:
            raise UserError(f"folder {spec} holds no images ({', '.join(sorted(suffixes))})")
        return files
    if not spec.is_file():
        raise UserError(f"--input {spec} does not exist; pass an image, a folder or a .txt list")
    if spec.suffix.lower() == ".txt":
        files = [Path(line.strip()) for line in spec.read_text().splitlines() if line.strip()]
        # Relative entries are read from the working directory, else next to the list.
        files = [f if f.is_absolute() or f.exists() else spec.parent / f for f in files]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise UserError(f"list {spec} names {len(missing)} missing image(s), e.g. {missing[0]}")
        return files
    return [spec]
