"""The plain supernet: the search written as DARTS writes it, one module per edge.

This is the readable definition of what the fast supernet (`modeling/search_cell.py`)
computes, and the baseline it is tested and benchmarked against:

- `MixedOp`, paper Eq. 2: an edge's output is the sum over the candidate operations of
  softmax(alpha)_o * o(x), every operation of the table (`modeling.operations.OPS`) a module
  of its own;
- `PlainSearchCell`, paper Eq. 1 and 6: block i sums the mixed operations of all its inputs
  (H(l-2), H(l-1) and the blocks before it); a node of the trellis applies the cell to each of
  its incoming states apart and sums the results weighted by the normalised betas.

The network around the cells (stem, trellis, ASPP heads) is `modeling.supernet`'s, with
`SupernetConfig(implementation="plain")`; `train_autodeeplab.py --supernet plain` searches
with it. It computes the same forward and gradients as the fast supernet with every batch in
training mode (tested); its batch norms' running statistics are kept per edge, not per edge and
incoming state, so in eval mode the two differ slightly. It is several times slower.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from modeling.operations import NONE_OP, PRIMITIVES, search_op, skip_connect
from modeling.search_cell import (ATROUS_CONVS, FALLBACK_OPS, SEP_CONVS, channel_shuffle,
                                  search_preprocess)
from modeling.search_space import cell_edges, edge_offset


class MixedOp(nn.Module):
    """One edge of the cell: every candidate operation on `channels` channels (paper Eq. 2).
    `none` is zero and left out; its alpha still competes in the softmax."""

    def __init__(self, channels: int):
        super().__init__()
        self.ops = nn.ModuleDict({name: search_op(name, channels) for name in PRIMITIVES
                                  if name != NONE_OP})
        self.columns = [PRIMITIVES.index(name) for name in self.ops]  # each op's alpha
        self.skip_dropout = 0.0  # AutoDeepLabSearch.set_skip_dropout

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W); weights: (len(PRIMITIVES),), this edge's normalised alphas."""
        return sum(weights[i] * (skip_connect(x, self.skip_dropout, self.training)
                                 if name == "skip_connect" else op(x))
                   for i, (name, op) in zip(self.columns, self.ops.items()))


class PlainSearchCell(nn.Module):
    """The cell of one node, applied to each incoming state; the arguments and the forward
    are `modeling.search_cell.SearchCell`'s, except that the forward reads the alphas (E, ops)
    and the edge weights as they are.

    With `partial_channels` K > 1 (PC-DARTS), every edge runs its mixed operation on the first
    C/K channels of its input, passes the others, concatenates and shuffles the channels; a
    block sums its edges weighted by the normalised edge weights.
    """

    def __init__(self, steps: int, block_multiplier: int, channels: int,
                 incoming: list[tuple[int, int]], prev_prev_channels: int,
                 partial_channels: int = 1):
        super().__init__()
        self.steps, self.block_multiplier = steps, block_multiplier
        self.partial_channels = partial_channels
        self.directions = [d for d, _ in incoming]
        self.preprocess = nn.ModuleList(search_preprocess(d, c_in, channels)
                                        for d, c_in in incoming)
        self.preprocess_prev_prev = search_preprocess(-1, prev_prev_channels, channels)
        # One mixed operation per edge, in edge-index order (`cell_edges`).
        self.edges = nn.ModuleList(MixedOp(channels // partial_channels)
                                   for _ in cell_edges(steps))

    def edge(self, index: int, x: torch.Tensor, alphas: torch.Tensor,
             edge_weights: torch.Tensor | None) -> torch.Tensor:
        parts = self.partial_channels
        if parts == 1:
            return self.edges[index](x, alphas[index])
        c = x.shape[1] // parts
        out = torch.cat([self.edges[index](x[:, :c], alphas[index]), x[:, c:]], dim=1)
        out = channel_shuffle(out.permute(0, 2, 3, 1), parts).permute(0, 3, 1, 2)
        return edge_weights[index] * out

    def forward(self, inputs: list[torch.Tensor], prev_prev: torch.Tensor,
                betas: torch.Tensor, size: tuple[int, int], alphas: torch.Tensor,
                edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        """inputs: the incoming states; prev_prev: H(l-2); betas: (G,) normalised; size: this
        level's (H, W); alphas: (E, ops) normalised; edge_weights: (E,) normalised (partial
        channels only). Returns (N, block_multiplier * C, H, W)."""
        s0 = self.preprocess_prev_prev(prev_prev, size)
        out = 0
        for pre, direction, h, beta in zip(self.preprocess, self.directions, inputs, betas):
            states = [s0, pre(h, size) if direction < 0 else pre(h)]
            for block in range(self.steps):
                states.append(sum(self.edge(edge_offset(block) + j, state, alphas, edge_weights)
                                  for j, state in enumerate(states)))
            out = out + beta * torch.cat(states[-self.block_multiplier:], dim=1)
        return out


def corresponding_parameters(fast: nn.Module, plain: nn.Module) -> list[tuple[str, slice, str]]:
    """How two supernets of one `SupernetConfig`, one fast and one plain, hold the same
    parameters: (fast name, rows, plain name) for every plain parameter, where rows are the
    plain parameter's rows (dim 0) in the fast one. The fast supernet stacks the weights of
    the k edges that read one state along dim 0, C rows per edge."""
    fast_names = dict(fast.named_parameters())
    pairs = []
    for name in dict(plain.named_parameters()):
        if ".edges." not in name:
            pairs.append((name, slice(None), name))  # stem, heads, preprocess, alphas, betas
    for key, cell in fast.cells.items():
        for edge, (block, j) in enumerate(cell_edges(cell.steps)):
            ops = "prev_prev_ops" if j == 0 else f"source_ops.{j - 1}"
            fast_prefix, plain_prefix = f"cells.{key}.{ops}", f"cells.{key}.edges.{edge}.ops"
            e = block - max(0, j - 1)  # the edge's place among those that read state j
            c = cell.prev_prev_ops.channels
            rows = slice(e * c, (e + 1) * c)
            for name in SEP_CONVS:  # SepConv: ReLU, depthwise, pointwise, BN, twice
                for stage, (dw, pw) in ((1, (1, 2)), (2, (5, 6))):
                    pairs.append((f"{fast_prefix}.{name}_dw{stage}", rows,
                                  f"{plain_prefix}.{name}.op.{dw}.weight"))
                    pairs.append((f"{fast_prefix}.{name}_pw{stage}", rows,
                                  f"{plain_prefix}.{name}.op.{pw}.weight"))
            for name in ATROUS_CONVS:
                pairs.append((f"{fast_prefix}.{name}", rows, f"{plain_prefix}.{name}.conv.weight"))
            for name in FALLBACK_OPS:
                for param, _ in plain.cells[key].edges[edge].ops[name].named_parameters():
                    pairs.append((f"{fast_prefix}.fallback.{name}.{e}.{param}", slice(None),
                                  f"{plain_prefix}.{name}.{param}"))
    missing = [f for f, _, _ in pairs if f not in fast_names]
    if missing:
        raise ValueError(f"the fast supernet has no parameter {missing[0]}: are both of one "
                         f"SupernetConfig?")
    return pairs


@torch.no_grad()
def copy_fast_to_plain(fast: nn.Module, plain: nn.Module) -> None:
    """Give `plain` the parameters of `fast` (`corresponding_parameters`)."""
    fast_params, plain_params = dict(fast.named_parameters()), dict(plain.named_parameters())
    for fast_name, rows, plain_name in corresponding_parameters(fast, plain):
        plain_params[plain_name].copy_(fast_params[fast_name][rows])
