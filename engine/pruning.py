"""Choosing the cell by pruning the supernet: greedy backward elimination of (input,
operation) pairs, each removal scored by the validation loss it costs.

Selection by perturbation (engine/perturbation.py, DARTS-PT's one-shot form) scores every
removal against the whole supernet. An operation the supernet uses on many edges can then look
dispensable on each, because its other copies stand in for the one removed. On the planted
sparks task the supernets lose most without max_pool_3x3 on every edge, yet the one-shot decode
keeps it on few edges (docs/search_learning/README.md). Pruning scores again after every
removal, so that once most copies of an operation are gone, the ones left show what they carry.

The rule. Every (edge, operation) pair of the cell, `none` aside, starts in the supernet. One
at a time, the pair whose removal raises the validation loss least goes, provided its block
keeps pairs on at least two inputs. Pruning ends when every block has two pairs left, on two
inputs: that is the cell. The operations and the inputs are chosen by the one rule, and the
cell's own loss in the supernet (only its pairs left) is known at the end. Nothing is
fine-tuned between removals (DARTS-PT's progressive form fine-tunes between its decisions).

The cost. Scoring every pair again after every removal needs about 9,000 forward passes for the
paper's cell (140 pairs). The scores are therefore evaluated lazily (Minoux's accelerated
greedy): a pair's score from an earlier state is kept, and only the pair at the head of the
ranking is scored again; it goes if it still costs no more than the next pair's score. This
picks the same pairs as scoring everything whenever a removal never makes another pair cheaper
to remove, as when pairs stand in for one another; `prune` is tested against the full
re-scoring. Where a removal does make another pair cheaper, that pair may go later than the
full greedy would remove it.

As in engine/perturbation.py the batch norms normalise with each batch's statistics (or with
the running ones, `batch_statistics=False`), and the network path is still decoded from the
betas (Viterbi).
"""
from __future__ import annotations

import heapq
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from engine.perturbation import (SCORED, buffers_kept, load_for_scoring, mean_loss,
                                 shared_pairs)
from modeling.decoding import steps_for_edges
from modeling.genotypes import INPUTS_PER_BLOCK, input_name
from modeling.operations import PRIMITIVES
from modeling.search_space import edge_offset, num_edges


@dataclass(frozen=True)
class Pruning:
    """A selection by pruning: the cell, the order the pairs went in and the losses."""

    cell: list  # per block two (input index, operation), in input-index order
    base_loss: float  # validation loss of the whole supernet
    cell_loss: float  # with only the cell's pairs left
    removals: list  # (edge, operation name, loss rise) in the order removed
    evaluations: int  # passes over the validation batches
    images: int
    batch_statistics: bool

    def to_json(self) -> dict:
        return {"base_loss": self.base_loss, "cell_loss": self.cell_loss,
                "images": self.images, "batch_statistics": self.batch_statistics,
                "evaluations": self.evaluations,
                "removals": [{"edge": e, "operation": op, "rise": rise}
                             for e, op, rise in self.removals],
                "cell": [[list(pair) for pair in block] for block in self.cell]}


def cell_mask(cell, shape) -> np.ndarray:
    """The (E, ops) 0/1 mask that keeps only `cell`'s (input, operation) pairs."""
    mask = np.zeros(shape)
    for block, pairs in enumerate(cell):
        for inp, op in pairs:
            mask[edge_offset(block) + inp, PRIMITIVES.index(op)] = 1
    return mask


def prune(loss, steps: int, log=print) -> tuple[list, float, float, list, int]:
    """Greedy backward elimination (module docstring) of a cell of `steps` blocks.

    loss: maps a boolean (E, ops) array of the pairs left (`none` never left) to the
    validation loss. Returns (cell, the loss with every pair left, the cell's loss, removals
    as (edge, operation name, rise), the number of `loss` calls). Ties go to the lower edge
    and operation index."""
    alive = np.zeros((num_edges(steps), len(PRIMITIVES)), dtype=bool)
    alive[:, SCORED] = True
    blocks = [range(edge_offset(b), edge_offset(b) + 2 + b) for b in range(steps)]
    block_of = [b for b in range(steps) for _ in blocks[b]]

    def may_go(edge: int, op: int) -> bool:  # its block keeps pairs on two inputs
        alive[edge, op] = False
        inputs = sum(alive[e].any() for e in blocks[block_of[edge]])
        alive[edge, op] = True
        return inputs >= INPUTS_PER_BLOCK

    def loss_without(edge: int, op: int) -> float:
        alive[edge, op] = False
        value = loss(alive)
        alive[edge, op] = True
        return value

    start = current = loss(alive)
    calls, removed = 1, []
    # (rise, edge, op, how many pairs had gone when it was scored): a lazy priority queue
    heap = []
    for edge, op in zip(*np.nonzero(alive)):
        heap.append((loss_without(edge, op) - current, int(edge), int(op), 0))
        calls += 1
    heapq.heapify(heap)
    while heap:
        rise, edge, op, scored_at = heapq.heappop(heap)
        if not may_go(edge, op):  # its block is down to two inputs; it never gets further
            continue
        if scored_at < len(removed):  # stale: score it again in the current supernet
            fresh = loss_without(edge, op)
            calls += 1
            heapq.heappush(heap, (fresh - current, edge, op, len(removed)))
            continue
        alive[edge, op] = False
        current += rise
        removed.append((edge, PRIMITIVES[op], rise))
        log(f"removed {input_name(edge - edge_offset(block_of[edge]))} {PRIMITIVES[op]} of "
            f"block {block_of[edge] + 1} (loss {rise:+.4f} -> {current:.4f}); "
            f"{int(alive.sum())} pairs left, {calls} evaluations")
    cell = [[(e - blocks[b][0], PRIMITIVES[int(np.flatnonzero(alive[e])[0])])
             for e in blocks[b] if alive[e].any()] for b in range(steps)]
    return cell, start, current, removed, calls


def prune_supernet(model, batches, autocast=nullcontext, log=print,
                   batch_statistics: bool = True) -> Pruning:
    """`prune` the cell of `model` on the validation `batches` (`mean_loss`); the model's
    buffers are as before afterwards."""
    def loss(alive) -> float:
        mask = torch.as_tensor(alive, dtype=model.alphas.dtype, device=model.alphas.device)
        return mean_loss(model, batches, mask, autocast, batch_statistics)

    start = time.time()
    pairs = len(SCORED) * model.alphas.shape[0]
    log(f"pruning {pairs} (input, operation) pairs, starting from the whole supernet")
    with buffers_kept(model):
        cell, base, cell_loss, removals, calls = prune(
            loss, steps_for_edges(model.alphas.shape[0]), log=log)
    log(f"pruned in {time.time() - start:.0f}s, {calls} evaluations "
        f"({(time.time() - start) / calls:.1f}s each); supernet validation loss {base:.4f}")
    images = sum(len(images) for images, _ in batches)
    return Pruning(cell, base, cell_loss, removals, calls, images, batch_statistics)


def prune_search_checkpoint(path, *, device: torch.device, log=print, **scoring):
    """`prune_supernet` a search checkpoint's supernet on its search's validation images
    (`engine.perturbation.load_for_scoring` and its keyword arguments). Returns (the search's
    architecture, the `Pruning`, and a function giving any cell's loss in the same supernet on
    the same images, to compare other cells with)."""
    arch, model, batches = load_for_scoring(path, device=device, log=log, **scoring)
    statistics = scoring.get("batch_statistics", True)
    pruning = prune_supernet(model, batches, log=log, batch_statistics=statistics)

    def cell_loss(cell) -> float:
        mask = torch.as_tensor(cell_mask(cell, tuple(model.alphas.shape)),
                               dtype=model.alphas.dtype, device=device)
        with buffers_kept(model):
            return mean_loss(model, batches, mask, batch_statistics=statistics)
    return arch, pruning, cell_loss


def format_pruning(pruning: Pruning, alpha_cell, alpha_loss: float) -> str:
    """Readable report of a selection by pruning beside the alphas' cell."""
    statistics = "batch" if pruning.batch_statistics else "running"
    lines = [f"cell chosen by pruning on {pruning.images} validation images (batch norms on "
             f"{statistics} statistics, {pruning.evaluations} evaluations), per block:"]
    for block, pairs in enumerate(pruning.cell):
        lines.append(f"  block {block + 1}: " + "   ".join(
            f"{input_name(inp):>7} {op}" for inp, op in pairs))
    lines.append(f"supernet validation loss {pruning.base_loss:.4f}; with only this cell "
                 f"{pruning.cell_loss:.4f}; with only the alphas' cell {alpha_loss:.4f}")
    lines.append(f"the alphas' cell (the paper's decode) shares "
                 f"{shared_pairs(pruning.cell, alpha_cell)} of these "
                 f"{sum(len(block) for block in pruning.cell)} (input, operation) pairs")
    return "\n".join(lines)
