"""From architecture parameters to a discrete architecture (paper section 3.3).

Pure functions on numpy arrays, shared by the supernet's `genotype()`, the search logs and
`decode_autodeeplab.py`, so that all of them report the same architecture:

- `decode_network_path(probs)`: the most probable path through the layer x level trellis
  (Viterbi), `top_k_paths` the k most probable, `path_probability` one path's probability;
- `decode_cell(weights)`: per block the two strongest inputs with their strongest operation;
- `genotype_from_arch(alphas, betas)`: raw parameters -> normalised -> `Genotype`;
- `decode_margins(weights, probs)`: how far the decoded choices are ahead of the next ones.

`format_summary` is the readable report that decode prints (engine/search_checkpoint.py reads
the parameters from a search checkpoint).

Path ranking. Paths are compared by their exact probability: the product of the float
transition probabilities is formed with `fractions.Fraction`, so there is no underflow on
near-zero rows and no rounding that could make the dynamic programme and an exhaustive search
disagree. Two refinements make the order total and the k-best programme exact:
1. Among paths of equal probability because a transition has probability exactly 0 (a softmax
   that underflowed), fewer zero transitions rank first, then the larger product of the rest.
2. Remaining ties go to the path with the lower level at the first layer where they differ.
Both keys are preserved when a common suffix is appended, so keeping the k best prefixes at
every node (k-best Viterbi) yields exactly the k best paths.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from modeling.genotypes import INPUTS_PER_BLOCK, Genotype, input_name
from modeling.operations import PRIMITIVES
from modeling.search_space import (DIRECTIONS, NUM_LEVELS, edge_offset, level_stride,
                                   normalize_alphas, normalize_betas, normalize_edge_weights,
                                   num_edges, transition_mask)

NONE_INDEX = PRIMITIVES.index("none")
STEM_LEVEL = 0


# --- network path ------------------------------------------------------------------------

def _check_probs(probs) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[1:] != (NUM_LEVELS, len(DIRECTIONS)) or not probs.shape[0]:
        raise ValueError(f"probs must have shape (L, {NUM_LEVELS}, {len(DIRECTIONS)}) with "
                         f"L >= 1, got {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probs must be finite and non-negative (normalised betas)")
    mask = transition_mask(probs.shape[0])
    if (probs[~mask] != 0).any():
        raise ValueError("probs has weight on transitions that do not exist; pass "
                         "normalize_betas(betas, transition_mask(L)), not raw betas")
    return probs


def _factor(p: float) -> tuple[int, Fraction]:
    # (number of zero factors, exact product of the non-zero ones); see the module docstring.
    return (1, Fraction(1)) if p == 0 else (0, Fraction(float(p)))


def _rank(entry):
    zeros, product, path = entry
    return zeros, -product, path


def _k_best(probs: np.ndarray, k: int) -> list[tuple[int, Fraction, tuple[int, ...]]]:
    """k-best Viterbi over the trellis: entries (zeros, product, path), best first."""
    mask = transition_mask(probs.shape[0])
    # beams[level]: the k best prefixes ending at that level of the current layer.
    beams = {STEM_LEVEL: [(0, Fraction(1), ())]}
    for layer in range(probs.shape[0]):
        candidates: dict[int, list] = {}
        for source, prefixes in beams.items():
            for d, step in enumerate(DIRECTIONS):
                if not mask[layer, source, d]:
                    continue
                zeros, factor = _factor(probs[layer, source, d])
                target = source + step
                candidates.setdefault(target, []).extend(
                    (z + zeros, product * factor, path + (target,))
                    for z, product, path in prefixes)
        beams = {level: sorted(entries, key=_rank)[:k] for level, entries in candidates.items()}
    return sorted((e for entries in beams.values() for e in entries), key=_rank)[:k]


def decode_network_path(probs) -> list[int]:
    """The most probable valid network path (Viterbi; paper section 3.3).

    probs: (L, 4, 3), `probs[l, s, d]` the normalised probability that node (l - 1, s) moves
    in direction d (0: to level s - 1, 1: stay, 2: to level s + 1) into layer l; for l = 0 the
    source is the stem at level 0. Entries of transitions that do not exist must be 0.
    Returns the level of every layer. Equal to exhaustive search over all valid paths, ties
    broken as described in the module docstring.
    """
    return list(_k_best(_check_probs(probs), 1)[0][2])


def top_k_paths(probs, k: int) -> list[tuple[list[int], float]]:
    """The k most probable valid paths, best first, as (levels, probability).

    Exact (k-best Viterbi, same order as `decode_network_path`, whose path comes first).
    Fewer than k entries when fewer valid paths exist.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0:
        return []
    return [(list(path), 0.0 if zeros else float(product))
            for zeros, product, path in _k_best(_check_probs(probs), k)]


def level_distribution(probs) -> np.ndarray:
    """(L, 4): the probability of each level at each layer for a path drawn from the
    transitions `probs` (a Markov chain from the stem at level 0). Unlike the decoded path,
    it moves smoothly with the betas, so it shows a search leaning towards coarse or fine
    levels before the decode flips."""
    probs = _check_probs(probs)
    dist = np.zeros((probs.shape[0], NUM_LEVELS))
    previous = np.eye(NUM_LEVELS)[STEM_LEVEL]
    for layer in range(probs.shape[0]):
        for level in range(NUM_LEVELS):
            for d, step in enumerate(DIRECTIONS):
                if 0 <= level + step < NUM_LEVELS:
                    dist[layer, level + step] += previous[level] * probs[layer, level, d]
        previous = dist[layer]
    return dist


def _check_path(path, num_layers: int) -> list[int]:
    path = [int(level) for level in path]
    previous = STEM_LEVEL
    if len(path) != num_layers:
        raise ValueError(f"path has {len(path)} layers, probs has {num_layers}")
    for layer, level in enumerate(path):
        if level - previous not in DIRECTIONS or not 0 <= level < NUM_LEVELS:
            raise ValueError(f"path {path} is not a valid network path (layer {layer})")
        previous = level
    return path


def path_probability(probs, path) -> float:
    """Probability of one valid path: the product of its transition probabilities."""
    probs = _check_probs(probs)
    product = Fraction(1)
    previous = STEM_LEVEL
    for layer, level in enumerate(_check_path(path, probs.shape[0])):
        product *= Fraction(float(probs[layer, previous, DIRECTIONS.index(level - previous)]))
        previous = level
    return float(product)


# --- cell ----------------------------------------------------------------------------------

def steps_for_edges(num_cell_edges: int) -> int:
    """Inverse of `num_edges`: blocks in a cell with that many edges; ValueError if none."""
    steps = 1
    while num_edges(steps) < num_cell_edges:
        steps += 1
    if num_edges(steps) != num_cell_edges:
        raise ValueError(f"{num_cell_edges} edges is not 2 + 3 + ... + (steps + 1) for any steps")
    return steps


def decode_cell(weights) -> list[list[tuple[int, str]]]:
    """Per block the two inputs whose strongest non-`none` operation weighs most (paper 3.3).

    weights: (E, 8) softmaxed alphas, edges numbered block by block, inputs in index order
    (`cell_edges`). Returns per block `[(input_index, operation), (input_index, operation)]`
    in input-index order; `none` is never chosen. Ties go to the lower input index and the
    lower operation index.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(PRIMITIVES):
        raise ValueError(f"weights must have shape (E, {len(PRIMITIVES)}), got {weights.shape}")
    if not np.isfinite(weights).all():
        raise ValueError("weights must be finite")
    # `none` can carry most weight on an edge (DARTS' known failure); it is never a choice.
    real = weights.copy()
    real[:, NONE_INDEX] = -np.inf
    return cell_from_scores(real, real.max(axis=1))


def cell_from_scores(operation_scores, edge_scores) -> list[list[tuple[int, str]]]:
    """Per block the two inputs of highest `edge_scores` (E,), each with its operation of
    highest `operation_scores` (E, ops); the format of `decode_cell`. Ties go to the lower
    input index and the lower operation index. `decode_cell` scores by the alphas, selection
    by perturbation (engine/perturbation.py) by the loss each removal costs."""
    best_op = np.asarray(operation_scores).argmax(axis=1)  # first maximum wins ties
    strength = np.asarray(edge_scores)
    cell = []
    for block in range(steps_for_edges(len(strength))):
        start = edge_offset(block)
        kept = kept_inputs(strength[start:start + 2 + block])
        cell.append([(i, PRIMITIVES[best_op[start + i]]) for i in kept])
    return cell


def kept_inputs(block_scores) -> list[int]:
    """The block's INPUTS_PER_BLOCK inputs of highest score (one per input), in index order;
    ties go to the lower input index."""
    ranked = sorted(range(len(block_scores)), key=lambda i: (-block_scores[i], i))
    return sorted(ranked[:INPUTS_PER_BLOCK])


# --- raw parameters -> genotype --------------------------------------------------------------

def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def arch_probabilities(alphas, betas, edge_logits=None) -> tuple[np.ndarray, np.ndarray]:
    """Raw alphas (E, 8) and betas (L, 4, 3) -> (cell weights (E, 8), path probs (L, 4, 3)).

    Uses the project's one normalisation of each (`modeling/search_space.py`, paper Eq. 7).
    A search with partial channels also has edge-normalisation logits (E,); as in PC-DARTS,
    each edge's operation weights are then multiplied by its normalised edge weight, which
    decides the top-2 inputs of each block. Accepts numpy arrays or tensors; returns numpy.
    """
    alphas, betas = _to_numpy(alphas), _to_numpy(betas)
    if alphas.ndim != 2 or alphas.shape[1] != len(PRIMITIVES):
        raise ValueError(f"alphas must have shape (E, {len(PRIMITIVES)}), got {alphas.shape}")
    if betas.ndim != 3 or betas.shape[1:] != (NUM_LEVELS, len(DIRECTIONS)):
        raise ValueError(f"betas must have shape (L, {NUM_LEVELS}, {len(DIRECTIONS)}), "
                         f"got {betas.shape}")
    weights = normalize_alphas(torch.from_numpy(np.ascontiguousarray(alphas)))
    if edge_logits is not None:
        edge_logits = _to_numpy(edge_logits)
        if edge_logits.shape != (alphas.shape[0],):
            raise ValueError(f"edge_logits must have shape ({alphas.shape[0]},), got "
                             f"{edge_logits.shape}")
        steps = steps_for_edges(alphas.shape[0])
        weights = weights * normalize_edge_weights(
            torch.from_numpy(np.ascontiguousarray(edge_logits)).to(weights.dtype),
            steps).unsqueeze(1)
    probs = normalize_betas(torch.from_numpy(np.ascontiguousarray(betas)),
                            torch.from_numpy(transition_mask(betas.shape[0])))
    return weights.numpy(), probs.numpy()


def genotype_from_arch(alphas, betas, edge_logits=None) -> Genotype:
    """Decode raw alphas (E, 8) and betas (L, 4, 3) (and, from a partial-channel search, the
    edge logits (E,)) into a `Genotype` (paper section 3.3)."""
    return genotype_from_probabilities(*arch_probabilities(alphas, betas, edge_logits))


def genotype_from_probabilities(weights, probs) -> Genotype:
    """The `Genotype` of normalised cell weights (E, 8) and path probabilities (L, 4, 3)."""
    return Genotype(network_path=tuple(decode_network_path(probs)),
                    cell=tuple(tuple(pairs) for pairs in decode_cell(weights)))


# A decode is reported as undecided (the demo and decode say so) when the decoded path is less
# than twice as likely as the next best one, or the kept edges' operations lead the next best
# by under 5 points of softmax weight on average: judgement calls, stated in README.
UNDECIDED_PATH_MARGIN = 2.0
UNDECIDED_OP_GAP = 0.05


def decode_margins(weights, probs) -> dict:
    """How decided the decoded architecture is, from normalised weights (E, 8) and path
    probabilities (L, 4, 3) (`arch_probabilities`):

    - `path_prob`: the decoded path's probability; `path_margin`: its ratio to the second
      best path's (1.0: a tie, the decode is a coin toss between them);
    - `op_gap_min` / `op_gap_mean`: over the edges the cell keeps, the weight of the chosen
      operation minus that of the next best non-`none` one (0: undecided).
    """
    weights = np.asarray(weights, dtype=np.float64)
    (best, p1), *rest = top_k_paths(probs, 2)
    p2 = rest[0][1] if rest else 0.0
    real = np.delete(weights, NONE_INDEX, axis=1)
    top2 = np.sort(real, axis=1)[:, -2:]
    kept = [edge_offset(block) + inp for block, pairs in enumerate(decode_cell(weights))
            for inp, _ in pairs]
    gaps = top2[kept, 1] - top2[kept, 0]
    return {"path_prob": p1, "path_margin": p1 / p2 if p2 > 0 else float("inf"),
            "op_gap_min": float(gaps.min()), "op_gap_mean": float(gaps.mean())}


def is_undecided(margins: dict) -> bool:
    """True when `decode_margins` says the decode is too close to call (constants above)."""
    return (margins["path_margin"] < UNDECIDED_PATH_MARGIN
            or margins["op_gap_mean"] < UNDECIDED_OP_GAP)


def mean_entropies(weights, probs) -> tuple[float, float, float, float]:
    """(alpha entropy, its uniform value ln 8, beta entropy, its uniform value): means over
    the edges (each edge's weights renormalised) and over the nodes that send transitions."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum(axis=1, keepdims=True)
    alpha = float(-(w * np.log(np.clip(w, 1e-300, None))).sum(axis=1).mean())
    p = np.asarray(probs, dtype=np.float64)
    nodes = p.sum(axis=-1) > 0
    beta = float(-(p * np.log(np.clip(p, 1e-300, None))).sum(axis=-1)[nodes].mean())
    beta_uniform = float(np.log(transition_mask(p.shape[0]).sum(axis=-1)[nodes]).mean())
    return alpha, float(np.log(w.shape[1])), beta, beta_uniform


# --- readable report -------------------------------------------------------------------------

def _strides(path) -> str:
    return " ".join(f"{level_stride(level):>2}" for level in path)


def format_summary(genotype: Genotype, weights: np.ndarray, probs: np.ndarray,
                   top_paths: list[tuple[list[int], float]]) -> str:
    """Readable report of a decoded architecture: path as strides, cell, path probabilities.

    weights, probs: the normalised parameters (`arch_probabilities`); top_paths: the output
    of `top_k_paths`, whose first entry is the decoded path.
    """
    path = list(genotype.network_path)
    lines = [
        f"network path, output stride per layer 1..{genotype.num_layers} (stem at 4):",
        f"  {_strides(path)}",
        f"  levels {path}, probability {path_probability(probs, path):.4g}",
        "cell, per block: input operation (weight of that operation on that edge):",
    ]
    for block, pairs in enumerate(genotype.cell):
        parts = [f"{input_name(inp):>7} {op:<16}"
                 f"({weights[edge_offset(block) + inp, PRIMITIVES.index(op)]:.3f})"
                 for inp, op in pairs]
        lines.append(f"  block {block + 1}: " + "   ".join(parts))
    others = [(p, prob) for p, prob in top_paths if p != path]
    if others:
        lines.append("next best paths (output strides, probability):")
        for rank, (other, prob) in enumerate(others, start=2):
            lines.append(f"  {rank:>2}. {_strides(other)}   {prob:.4g}")
    margins = decode_margins(weights, probs)
    alpha_h, alpha_uniform, beta_h, beta_uniform = mean_entropies(weights, probs)
    mask = transition_mask(probs.shape[0]).astype(float)
    uniform = mask / np.maximum(mask.sum(-1, keepdims=True), 1)  # rows of absent nodes: 0
    uniform_levels = level_distribution(uniform) @ np.arange(NUM_LEVELS)
    lines += [
        "how far the search moved from uniform: mean entropy of the alphas "
        f"{alpha_h:.4f} (uniform {alpha_uniform:.4f}), of the betas {beta_h:.4f} "
        f"(uniform {beta_uniform:.4f})",
        "where the betas lead, expected level per layer of a path drawn from them: "
        + " ".join(f"{v:.2f}" for v in level_distribution(probs) @ np.arange(NUM_LEVELS))
        + " (uniform betas: " + " ".join(f"{v:.2f}" for v in uniform_levels) + ")",
        f"how decided: the path is {margins['path_margin']:.3g} times as likely as the next; "
        f"the chosen operations lead the next by {margins['op_gap_mean']:.4f} on average "
        f"(at least {margins['op_gap_min']:.4f})",
    ]
    if is_undecided(margins):
        lines.append(f"WARNING: this architecture is too close to call (path under "
                     f"{UNDECIDED_PATH_MARGIN:g}x the next, or operations under "
                     f"{UNDECIDED_OP_GAP:g} ahead): the search learned too little for this "
                     "decode to be trusted, and another seed may decode differently; search "
                     "longer (see docs/search_learning/README.md)")
    return "\n".join(lines)
