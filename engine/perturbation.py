"""Choosing the cell by perturbation instead of by the alphas' magnitudes (DARTS-PT: Wang et
al., "Rethinking Architecture Selection in Differentiable NAS", ICLR 2021).

The paper keeps, on each edge, the operation with the largest alpha, and in each block the two
inputs whose best operation weighs most (section 3.3). DARTS-PT argues that an alpha's size
need not measure what its operation contributes to the supernet, and measures that directly:
remove the operation from the edge's mixture, leave the other weights as they are, and see how
far the supernet's validation loss rises. Here, on every edge the operation whose removal
raises the loss most is kept, and in every block the two inputs whose removal (the whole
edge) raises it most.

As in DARTS-PT, the batch norms normalise with each batch's statistics while scoring: the
running statistics were gathered with every operation in place and no longer fit once one is
removed (`batch_statistics=False` scores with them instead, in eval mode). This is DARTS-PT's
one-shot form: every removal is scored on the same trained supernet. Its progressive form,
which fixes one edge at a time and fine-tunes the supernet between, is not implemented. The
network path is still decoded from the betas (Viterbi).
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dataloaders import IGNORE_INDEX, build_loader
from engine.search_checkpoint import SearchArchitecture, load_search_supernet
from engine.search_setup import build_val_set
from modeling.decoding import cell_from_scores
from modeling.genotypes import input_name
from modeling.operations import PRIMITIVES
from modeling.search_space import edge_offset
from utils.errors import UserError

# The operations a removal can score: `none` adds nothing to a mixture, so removing it
# changes nothing, and it is never chosen.
SCORED = [i for i, name in enumerate(PRIMITIVES) if name != "none"]


@dataclass(frozen=True)
class PerturbationScores:
    """How far the supernet's validation loss (mean cross-entropy per pixel) rises when
    parts of the cell's mixtures are removed. `nan` for `none`, which is not scored."""

    base_loss: float
    images: int  # validation images scored on
    batch_statistics: bool  # batch norms with each batch's statistics, else the running ones
    operation: np.ndarray  # (E, ops): one operation removed from one edge
    edge: np.ndarray  # (E,): every operation of one edge removed
    everywhere: np.ndarray  # (ops,): one operation removed from every edge

    def to_json(self) -> dict:
        def listed(array):
            return [None if np.isnan(v) else float(v) for v in np.ravel(array)]

        return {"base_loss": self.base_loss, "images": self.images,
                "batch_statistics": self.batch_statistics,
                "operations": list(PRIMITIVES),
                "operation": [listed(row) for row in self.operation],
                "edge": listed(self.edge),
                "everywhere": dict(zip(PRIMITIVES, listed(self.everywhere)))}


def stacked_batches(loader, device: torch.device, batch_size: int, max_images: int | None = None,
                    min_batch: int = 1):
    """The loader's (images, targets) moved to `device`, consecutive ones of one size joined
    into batches of up to `batch_size` images (scored many times, so loaded once); at most
    `max_images` images. A batch of fewer than `min_batch` images joins the one before (of
    the same size), which may then exceed `batch_size`; a ValueError if there is none."""
    batches, pending, taken = [], [], 0

    def flush():
        if not pending:
            return
        batch = tuple(torch.cat(parts).to(device) for parts in zip(*pending))
        pending.clear()
        if len(batch[0]) < min_batch:
            if not batches or batches[-1][0].shape[1:] != batch[0].shape[1:]:
                raise ValueError(f"a batch of {len(batch[0])} image(s) of size "
                                 f"{tuple(batch[0].shape[-2:])} is left, and batch statistics "
                                 f"need at least {min_batch}")
            batch = tuple(torch.cat(parts) for parts in zip(batches.pop(), batch))
        batches.append(batch)

    for images, targets in loader:
        if max_images is not None:
            images, targets = images[:max_images - taken], targets[:max_images - taken]
        if pending and (images.shape[1:] != pending[0][0].shape[1:]
                        or sum(len(p[0]) for p in pending) + len(images) > batch_size):
            flush()
        pending.append((images, targets))
        taken += len(images)
        if max_images is not None and taken >= max_images:
            break
    flush()
    return batches


@torch.no_grad()
def mean_loss(model, batches, operation_mask: torch.Tensor | None = None,
              autocast=nullcontext, batch_statistics: bool = True) -> float:
    """Cross-entropy per labelled pixel of `model` over all `batches`, its batch norms
    normalising with each batch's statistics (DARTS-PT: the running ones were gathered with
    every operation in place; their running statistics are updated, see
    `perturbation_scores`) or, with `batch_statistics=False`, with the running ones (eval
    mode). Skip dropout is switched off: the scores are deterministic."""
    model.set_skip_dropout(0.0)
    model.train(batch_statistics)
    total, pixels = 0.0, 0
    for images, targets in batches:
        with autocast():
            logits = model(images, operation_mask=operation_mask)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # autocast: fp32
        total += F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX,
                                 reduction="sum").item()
        pixels += int((targets != IGNORE_INDEX).sum())
    if not pixels:
        raise ValueError("the batches hold no labelled pixel")
    return total / pixels


@contextmanager
def buffers_kept(model):
    """Scoring in train mode updates the batch norms' running statistics: put them (every
    buffer) back as they were on leaving, also after an error."""
    saved = [b.clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in zip(model.buffers(), saved):
                b.copy_(value)


def perturbation_scores(model, batches, autocast=nullcontext, log=print,
                        show_progress: bool = True,
                        batch_statistics: bool = True) -> PerturbationScores:
    """Score every removal on `batches` (`PerturbationScores`): each operation on each
    edge, each whole edge and each operation everywhere, against the whole supernet.
    `batch_statistics` as in `mean_loss`; the model's buffers are as before afterwards."""
    num_edges = model.alphas.shape[0]
    ones = torch.ones_like(model.alphas).detach()

    def loss(mask=None) -> float:
        return mean_loss(model, batches, mask, autocast, batch_statistics)

    def without(edges, operations):
        mask = ones.clone()
        mask[edges, operations] = 0
        return mask

    start = time.time()
    with buffers_kept(model):
        base = loss()
        removals = num_edges * (len(SCORED) + 1) + len(SCORED)
        log(f"supernet validation loss {base:.4f} ({time.time() - start:.1f}s); scoring "
            f"{removals} removals, about {removals * (time.time() - start) / 60:.1f} min")
        operation = np.full(tuple(ones.shape), np.nan)
        edge = np.zeros(num_edges)
        everywhere = np.full(len(PRIMITIVES), np.nan)
        with tqdm(total=removals, desc="perturbation", leave=False,
                  disable=None if show_progress else True) as bar:
            for e in range(num_edges):
                for o in SCORED:
                    operation[e, o] = loss(without(e, o)) - base
                    bar.update()
                edge[e] = loss(without(e, slice(None))) - base
                bar.update()
            for o in SCORED:
                everywhere[o] = loss(without(slice(None), o)) - base
                bar.update()
    images = sum(len(images) for images, _ in batches)
    return PerturbationScores(base, images, batch_statistics, operation, edge, everywhere)


def decode_cell_by_perturbation(scores: PerturbationScores) -> list[list[tuple[int, str]]]:
    """Per block the two inputs whose removal raises the loss most, each with the operation
    whose removal raises it most (`modeling.decoding.cell_from_scores`, the alphas' rule and
    tie order)."""
    return cell_from_scores(np.where(np.isnan(scores.operation), -np.inf, scores.operation),
                            scores.edge)


def shared_pairs(cell, other) -> int:
    """How many (input, operation) pairs two decoded cells share, block by block."""
    return sum(len(set(map(tuple, a)) & set(map(tuple, b))) for a, b in zip(cell, other))


def load_for_scoring(path, *, device: torch.device, data_root: str | None = None,
                     max_images: int | None = None, batch_size: int = 8,
                     batch_statistics: bool = True, trust: bool = False, log=print):
    """A search checkpoint's architecture and supernet (on `device`) and its search's
    validation images as scoring batches (`stacked_batches`: the first `max_images`, all when
    None), read from `data_root` if given, else from where the search read them."""
    arch, model, flags = load_search_supernet(path, trust=trust)
    search_args = argparse.Namespace(**flags)
    if data_root is not None:
        search_args.data_root = data_root
    val_set = build_val_set(search_args)
    loader = build_loader(val_set, batch_size=1, shuffle=False, workers=0, device=device,
                          drop_last=False, seed=0)
    try:  # batch statistics of one image: the image-pooling batch norms see one value
        batches = stacked_batches(loader, device, batch_size, max_images,
                                  min_batch=2 if batch_statistics else 1)
    except ValueError as err:
        raise UserError(f"{err}; score on more images (--max-images), or with the running "
                        "statistics (--batch-norm running)") from err
    log(f"scoring the supernet of {arch.path} on "
        f"{sum(len(images) for images, _ in batches)} of {len(val_set)} validation "
        f"images of {search_args.dataset}")
    return arch, model.to(device), batches


def score_search_checkpoint(path, *, device: torch.device, data_root: str | None = None,
                            max_images: int | None = None, batch_size: int = 8,
                            batch_statistics: bool = True, trust: bool = False, log=print,
                            show_progress: bool = True
                            ) -> tuple[SearchArchitecture, PerturbationScores]:
    """Score every removal (`perturbation_scores`) of a search checkpoint's supernet on its
    search's validation images (`load_for_scoring`)."""
    arch, model, batches = load_for_scoring(
        path, device=device, data_root=data_root, max_images=max_images,
        batch_size=batch_size, batch_statistics=batch_statistics, trust=trust, log=log)
    scores = perturbation_scores(model, batches, log=log, show_progress=show_progress,
                                 batch_statistics=batch_statistics)
    return arch, scores


def format_scores(scores: PerturbationScores, cell, alpha_cell) -> str:
    """Readable report of a selection by perturbation: the chosen cell with its scores, each
    operation's score everywhere, and how far the cell differs from the alphas' (`cell` and
    `alpha_cell` as `decode_cell_by_perturbation` returns them)."""
    statistics = "batch" if scores.batch_statistics else "running"
    lines = [f"cell chosen by perturbation on {scores.images} validation images (batch norms "
             f"on {statistics} statistics; supernet loss {scores.base_loss:.4f}), per block: "
             "input operation (loss rise without that operation on that edge / without the "
             "edge):"]
    for block, pairs in enumerate(cell):
        parts = []
        for inp, op in pairs:
            edge = edge_offset(block) + inp
            parts.append(f"{input_name(inp):>7} {op:<16}("
                         f"{scores.operation[edge, PRIMITIVES.index(op)]:+.4f} / "
                         f"{scores.edge[edge]:+.4f})")
        lines.append(f"  block {block + 1}: " + "   ".join(parts))
    ranked = sorted(SCORED, key=lambda o: -scores.everywhere[o])
    lines.append("loss rise without one operation on every edge: " + ", ".join(
        f"{PRIMITIVES[o]} {scores.everywhere[o]:+.4f}" for o in ranked))
    lines.append(f"the alphas' cell (the paper's decode) shares {shared_pairs(cell, alpha_cell)} "
                 f"of these {sum(len(block) for block in cell)} (input, operation) pairs")
    return "\n".join(lines)
