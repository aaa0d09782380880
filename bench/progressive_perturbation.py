"""DARTS-PT's progressive selection, with fine-tuning, on a recorded search: an exploration,
not a decode this project offers (what it found: docs/search_learning/planted_exploration.md).

    .venv/bin/python bench/progressive_perturbation.py RUN/checkpoint.pth.tar
    .venv/bin/python bench/progressive_perturbation.py RUN/checkpoint.pth.tar --tune-steps 0

`decode_autodeeplab.py --select perturbation` is DARTS-PT's one-shot form (Wang et al.,
"Rethinking Architecture Selection in Differentiable NAS", ICLR 2021): every removal is
scored on the same trained supernet. This is its progressive form. Edges are decided one at a
time, in the cell's order: an edge keeps the operation whose removal raises the validation
loss most and loses the others, then the supernet's weights are fine-tuned with that edge
fixed for --tune-steps SGD steps on the search's half A, and the next edge is scored on the
changed supernet. Then, block by block, the two inputs whose removal raises the loss most are
kept and the block's other edges removed, each block followed by fine-tuning too.

Scoring is `engine.perturbation.mean_loss` (batch norms on each batch's statistics) on the
search's first --max-images validation images. Fine-tuning is SGD at a constant --tune-lr
with the search's momentum (fresh), weight decay, gradient clipping and skip dropout.
DARTS-PT fine-tunes for epochs between decisions; a few steps are what a CPU affords.

Prints each decision and writes --json: the cell, every decision with its scores and the
loss after it, the alphas' cell and, on a planted task, whether each holds the planted
answer.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.planted import TASKS  # noqa: E402
from dataloaders import IGNORE_INDEX, build_loader  # noqa: E402
from engine.perturbation import SCORED, mean_loss, shared_pairs, stacked_batches  # noqa: E402
from engine.search import weight_step  # noqa: E402
from engine.search_checkpoint import load_search_supernet  # noqa: E402
from engine.search_setup import build_data, build_val_set  # noqa: E402
from modeling.decoding import genotype_from_arch, kept_inputs  # noqa: E402
from modeling.operations import PRIMITIVES  # noqa: E402
from modeling.search_space import edge_offset  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.distributed import DistInfo  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a search's checkpoint.pth.tar")
    p.add_argument("--tune-steps", type=int, default=8,
                   help="SGD steps on half A after each decision (0: no fine-tuning)")
    p.add_argument("--tune-lr", type=float, default=0.005, help="fine-tuning learning rate")
    p.add_argument("--max-images", type=int, default=16, help="validation images scored on")
    p.add_argument("--batch-size", type=int, default=8, help="validation images per batch")
    p.add_argument("--seed", type=int, default=0,
                   help="torch seed (skip dropout while fine-tuning); the batches are the search's")
    p.add_argument("--json", default=None,
                   help="output (default: progressive.json beside the checkpoint)")
    return p


class FineTuner:
    """SGD steps of the supernet's weights on the search's half A, under an operation mask."""

    def __init__(self, model, search_args, split, lr: float, steps: int):
        self.model, self.args, self.steps = model, search_args, steps
        _, _, self.loader, _, _ = build_data(search_args, torch.device("cpu"), DistInfo(),
                                             split=split)
        self.batches = iter(self.loader)
        self.weights = model.weight_parameters()
        self.optimizer = torch.optim.SGD(self.weights, lr=lr, momentum=search_args.momentum,
                                         weight_decay=search_args.weight_decay)
        self.criterion = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

    def __call__(self, mask: torch.Tensor) -> None:
        self.model.set_skip_dropout(self.args.skip_dropout)
        self.model.train()
        for _ in range(self.steps):
            try:
                images, targets = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                images, targets = next(self.batches)
            weight_step(lambda x: self.model(x, operation_mask=mask), self.criterion,
                        self.optimizer, self.weights, images, targets, self.args.grad_clip)


def progressive_selection(model, batches, tune, log=print) -> tuple[list, list]:
    """The cell chosen progressively (module docstring), as (input, operation) pairs per
    block, and the decisions: for each edge and then each block, the loss rises scored and
    the validation loss they rise from."""
    mask = torch.ones_like(model.alphas).detach()
    num_edges = model.alphas.shape[0]
    chosen, decisions = {}, []

    def rise(changed, base) -> float:
        return mean_loss(model, batches, changed) - base

    start = time.time()
    for e in range(num_edges):
        base = mean_loss(model, batches, mask)
        rises = {}
        for o in SCORED:
            changed = mask.clone()
            changed[e, o] = 0
            rises[PRIMITIVES[o]] = rise(changed, base)
        best = max(rises, key=rises.get)  # the first of equal rises, as the one-shot decode
        chosen[e] = best
        mask[e] = 0
        mask[e, PRIMITIVES.index(best)] = 1
        tune(mask)
        decisions.append({"edge": e, "rises": rises, "kept": best, "loss_before": base})
        log(f"edge {e + 1}/{num_edges}: {best} (its removal {rises[best]:+.4f} on loss "
            f"{base:.4f}; {time.time() - start:.0f} s)")
    cell, block = [], 0
    while edge_offset(block) < num_edges:
        base = mean_loss(model, batches, mask)
        edges = range(edge_offset(block), edge_offset(block + 1))
        rises = []
        for e in edges:
            changed = mask.clone()
            changed[e] = 0
            rises.append(rise(changed, base))
        kept = kept_inputs(rises)
        for i, e in enumerate(edges):
            if i not in kept:
                mask[e] = 0
        tune(mask)
        cell.append([(i, chosen[edge_offset(block) + i]) for i in kept])
        decisions.append({"block": block, "rises": rises, "kept": kept, "loss_before": base})
        log(f"block {block + 1}: inputs {kept} kept (removal rises "
            f"{', '.join(f'{r:+.4f}' for r in rises)})")
        block += 1
    return cell, decisions


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    path = Path(args.checkpoint)
    arch, model, flags = load_search_supernet(path)
    search_args = argparse.Namespace(**flags)
    loader = build_loader(build_val_set(search_args), batch_size=1, shuffle=False, workers=0,
                          device=torch.device("cpu"), drop_last=False, seed=0)
    batches = stacked_batches(loader, torch.device("cpu"), args.batch_size, args.max_images,
                              min_batch=2)
    tune = FineTuner(model, search_args, load_checkpoint(path)["split"], args.tune_lr,
                     args.tune_steps)
    start = time.time()
    cell, decisions = progressive_selection(model, batches, tune)
    whole = decisions[0]["loss_before"]  # the first edge is scored on the whole supernet
    final = mean_loss(model, batches, _cell_mask(model, cell))
    by_alphas = genotype_from_arch(arch.alphas, arch.betas, arch.edge_logits)
    record = {"checkpoint": str(path), "tune_steps": args.tune_steps, "tune_lr": args.tune_lr,
              "images": sum(len(images) for images, _ in batches),
              "supernet_loss": whole, "final_loss": final, "cell": cell,
              "alpha_cell": by_alphas.cell, "shared_pairs": shared_pairs(cell, by_alphas.cell),
              "decisions": decisions, "seconds": round(time.time() - start, 1)}
    task = search_args.dataset.removeprefix("planted_")
    if task != search_args.dataset:
        module = TASKS[task]
        record["found"] = module.planted_answer_found(by_alphas.network_path, cell)
        record["found_by_alphas"] = module.planted_answer_found(by_alphas.network_path,
                                                                by_alphas.cell)
    out = Path(args.json) if args.json else path.parent / "progressive.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"supernet loss {whole:.4f}, with only the chosen cell {final:.4f}; cell {cell}; "
          f"{record['shared_pairs']} pairs shared with the alphas' cell"
          + (f"; planted answer found: {record['found']} (by the alphas: "
             f"{record['found_by_alphas']})" if "found" in record else "")
          + f"; {record['seconds']:.0f} s; -> {out}")
    return record


def _cell_mask(model, cell) -> torch.Tensor:
    """The operation mask that keeps exactly `cell`'s (input, operation) pairs."""
    mask = torch.zeros_like(model.alphas).detach()
    for block, pairs in enumerate(cell):
        for inp, op in pairs:
            mask[edge_offset(block) + inp, PRIMITIVES.index(op)] = 1
    return mask


if __name__ == "__main__":
    main()
