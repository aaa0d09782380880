"""A plain per-edge, per-transition evaluation of the supernet, for tests only.

It reads the fast supernet's own parameters but evaluates the paper's formulation literally:
for every node, the cell is applied separately to each incoming state (paper Eq. 6), and each
block sums one mixed operation per input edge (paper Eq. 1-2), every operation on its own.
H(l-2) is the node at the same level two layers back, else the nearest level there; the
stem's stride-2 and stride-4 outputs are the two layers before the first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from modeling.search_space import NUM_LEVELS, PRIMITIVES, edge_offset


def _bn(x):
    return F.batch_norm(x, None, None, training=True, eps=1e-5)


def mixed_op(x, ops, e, w):
    """One edge: sum over operations of weight * op(x). `ops` holds the stacked weights."""
    c = ops.channels
    rows = slice(e * c, (e + 1) * c)
    out = []
    for i, name in enumerate(PRIMITIVES):
        if name == "none":
            y = torch.zeros_like(x)
        elif name == "max_pool_3x3":
            y = _bn(F.max_pool2d(x, 3, 1, 1))
        elif name == "avg_pool_3x3":
            y = _bn(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        elif name == "skip_connect":
            y = x
        elif name.startswith("sep_conv"):
            k = int(name[-1])
            y = x
            for stage in ("1", "2"):
                y = F.relu(y)
                y = F.conv2d(y, getattr(ops, f"{name}_dw{stage}")[rows], padding=(k - 1) // 2,
                             groups=c)
                y = F.conv2d(y, getattr(ops, f"{name}_pw{stage}")[rows])
                y = _bn(y)
        else:
            k = int(name[-1])
            y = _bn(F.conv2d(F.relu(x), getattr(ops, name)[rows], padding=k - 1, dilation=2))
        out.append(w[i] * y)
    return sum(out)


def shuffle(x, parts):
    """PC-DARTS' channel_shuffle, written as in its paper's code (NCHW)."""
    n, c, h, w = x.shape
    return x.view(n, parts, c // parts, h, w).transpose(1, 2).reshape(n, c, h, w)


def partial_edge(x, ops, e, w, parts):
    """PC-DARTS edge: the mixed op on the first C/K channels, the rest passed, shuffled."""
    k = x.shape[1] // parts
    return shuffle(torch.cat([mixed_op(x[:, :k], ops, e, w), x[:, k:]], dim=1), parts)


def cell(cell_module, inputs, prev_prev, alphas, betas, size, edge_weights=None):
    steps, mult = cell_module.steps, cell_module.block_multiplier
    parts = cell_module.partial_channels
    outs = []
    for pre, direction, h in zip(cell_module.preprocess, cell_module.directions, inputs):
        s1 = pre(h, size) if direction < 0 else pre(h)
        states = [cell_module.preprocess_prev_prev(prev_prev, size), s1]
        for b in range(steps):
            terms = []
            for j, state in enumerate(states):
                ops = cell_module.prev_prev_ops if j == 0 else cell_module.source_ops[j - 1]
                e = b - max(0, j - 1)
                edge = edge_offset(b) + j
                if parts == 1:
                    terms.append(mixed_op(state, ops, e, alphas[edge]))
                else:
                    terms.append(edge_weights[edge]
                                 * partial_edge(state, ops, e, alphas[edge], parts))
            states.append(sum(terms))
        outs.append(torch.cat(states[-mult:], dim=1))
    return sum(beta * o for beta, o in zip(betas, outs))


def forward(model, images):
    cfg = model.config
    alphas, betas = model.normalized_alphas(), model.normalized_betas()
    edge_weights = model.normalized_edge_weights()
    # The two stride-2 stem layers: H(l-2) (level -1, stride 2) and H(l-1) (level 0) of the
    # first layer.
    half = model.stem[0](images)
    prev_prev, prev = {-1: half}, {0: model.stem[1](half)}
    sizes = [tuple(prev[0].shape[-2:])]
    for _ in range(1, NUM_LEVELS):
        sizes.append(tuple((v + 1) // 2 for v in sizes[-1]))
    for layer in range(cfg.num_layers):
        current = {}
        for (lay, target), sources in model.incoming.items():
            if lay != layer:
                continue
            weights = [betas[layer, s, d] for s, d in sources]
            # H(l-2): the same level two layers back (paper Eq. 6), else the nearest there.
            level = min(prev_prev, key=lambda s: abs(s - target))
            current[target] = cell(model.cells[f"{layer}_{target}"], [prev[s] for s, _ in sources],
                                   prev_prev[level], alphas, weights, sizes[target],
                                   edge_weights)
        prev_prev, prev = prev, current
    logits = 0
    for s in model.head_levels:
        logits = logits + F.interpolate(model.heads[str(s)](prev[s]), size=images.shape[-2:],
                                        mode="bilinear", align_corners=False)
    return logits
