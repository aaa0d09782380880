"""Decoding (paper section 3.3): Viterbi and k-best paths against exhaustive search, cell choice."""
from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch

from modeling.decoding import (arch_probabilities, decode_cell, decode_network_path,
                               genotype_from_arch, level_distribution, path_probability,
                               steps_for_edges, top_k_paths)
from modeling.genotypes import GENOTYPES
from modeling.operations import PRIMITIVES
from modeling.search_space import (DIRECTIONS, NUM_LEVELS, edge_offset, num_edges,
                                   normalize_betas, transition_mask)

NONE = PRIMITIVES.index("none")


# --- exhaustive search, written independently of the dynamic programme -----------------------

def all_valid_paths(num_layers: int) -> list[tuple[int, ...]]:
    """Every level sequence allowed by the transition table, by brute force over 4^L,
    in lexicographic order."""
    mask = transition_mask(num_layers)
    paths = []
    for path in itertools.product(range(NUM_LEVELS), repeat=num_layers):
        previous, ok = 0, True
        for layer, level in enumerate(path):
            step = level - previous
            if step not in DIRECTIONS or not mask[layer, previous, DIRECTIONS.index(step)]:
                ok = False
                break
            previous = level
        if ok:
            paths.append(path)
    return paths


def enumerate_paths(num_layers: int) -> list[tuple[int, ...]]:
    """The same set grown layer by layer (fast enough for L = 12); checked against the above."""
    paths = [(level,) for level in (0, 1)]
    for _ in range(num_layers - 1):
        paths = [p + (p[-1] + step,) for p in paths for step in DIRECTIONS
                 if 0 <= p[-1] + step < NUM_LEVELS]
    return paths


def test_path_enumeration_matches_the_transition_table():
    for num_layers in range(1, 8):
        assert sorted(enumerate_paths(num_layers)) == all_valid_paths(num_layers)


def brute_force_ranking(probs: np.ndarray) -> list[tuple[list[int], float]]:
    """All valid paths sorted by the documented order: exact probability (zero transitions
    counted apart), then levels from the first layer."""
    ranked = []
    for path in enumerate_paths(probs.shape[0]):
        zeros, product, previous = 0, Fraction(1), 0
        for layer, level in enumerate(path):
            p = float(probs[layer, previous, DIRECTIONS.index(level - previous)])
            if p == 0:
                zeros += 1
            else:
                product *= Fraction(p)
            previous = level
        ranked.append(((zeros, -product, path), 0.0 if zeros else float(product)))
    ranked.sort(key=lambda item: item[0])
    return [(list(key[2]), prob) for key, prob in ranked]


def random_probs(rng: np.random.Generator, num_layers: int, kind: str) -> np.ndarray:
    mask = transition_mask(num_layers)
    if kind == "softmax":  # what decode sees: normalised random betas
        betas = torch.from_numpy(rng.normal(size=mask.shape).astype(np.float32))
        return normalize_betas(betas, torch.from_numpy(mask)).numpy()
    if kind == "ties":  # few distinct values, so many paths share a probability
        values = rng.choice([0.25, 0.5, 0.5, 1.0], size=mask.shape)
    elif kind == "zeros":  # valid transitions of probability exactly 0 (underflowed softmax)
        values = rng.choice([0.0, 0.0, 0.3, 0.7], size=mask.shape)
    elif kind == "near_zero":  # rows so small that a float product of them underflows
        values = rng.uniform(size=mask.shape)
        rows = rng.uniform(size=mask.shape[:2]) < 0.5
        values[rows] *= 1e-300
    else:
        values = rng.uniform(size=mask.shape)
    return np.where(mask, values, 0.0)


KINDS = ("softmax", "ties", "zeros", "near_zero", "uniform")


@pytest.mark.parametrize("kind", KINDS)
def test_viterbi_and_k_best_equal_exhaustive_search(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    for trial in range(40):
        num_layers = 1 + trial % 7
        probs = random_probs(rng, num_layers, kind)
        expected = brute_force_ranking(probs)
        assert decode_network_path(probs) == expected[0][0]
        k = 1 + trial % 9
        assert top_k_paths(probs, k) == expected[:k]


@pytest.mark.parametrize("kind", ("softmax", "zeros", "uniform"))
def test_level_distribution_sums_path_probabilities_by_level(kind):
    # At layer l, the probability of each level is the total probability of the valid paths
    # through layers 0..l that end there (brute force over every such path; rows need not
    # sum to 1).
    rng = np.random.default_rng(11)
    for num_layers in (1, 3, 6):
        probs = random_probs(rng, num_layers, kind)
        expected = np.zeros((num_layers, NUM_LEVELS))
        for layer in range(num_layers):
            for path in all_valid_paths(layer + 1):
                expected[layer, path[-1]] += path_probability(probs[:layer + 1], path)
        np.testing.assert_allclose(level_distribution(probs), expected, rtol=1e-9, atol=1e-12)


def test_all_paths_tied_gives_lowest_levels_first():
    # Every valid transition has probability 1: every path ties; the order is by levels.
    for num_layers in (1, 4, 12):
        probs = transition_mask(num_layers).astype(np.float64)
        assert decode_network_path(probs) == [0] * num_layers
    probs = transition_mask(3).astype(np.float64)
    assert [tuple(p) for p, _ in top_k_paths(probs, 5)] == all_valid_paths(3)[:5]


def test_twelve_layers_match_vectorised_search():
    # Exact brute force at L = 12 is slow in Fractions; check the float probability instead.
    num_layers = 12
    paths = np.asarray(enumerate_paths(num_layers))
    assert len(paths) == 75025  # Fibonacci: few enough to enumerate (not 3^12)
    sources = np.concatenate([np.zeros((len(paths), 1), dtype=int), paths[:, :-1]], axis=1)
    directions = paths - sources + 1
    layer = np.arange(num_layers)
    rng = np.random.default_rng(7)
    for kind in ("softmax", "uniform", "ties"):
        probs = random_probs(rng, num_layers, kind)
        path_probs = probs.astype(np.float64)[layer, sources, directions].prod(axis=1)
        best = path_probs.max()
        decoded = decode_network_path(probs)
        assert path_probability(probs, decoded) == pytest.approx(best, rel=1e-12)
        top = top_k_paths(probs, 10)
        np.testing.assert_allclose([p for _, p in top], np.sort(path_probs)[::-1][:10],
                                   rtol=1e-12)
        assert top[0][0] == decoded


def test_viterbi_is_not_greedy():
    probs = np.zeros((2, NUM_LEVELS, len(DIRECTIONS)))
    probs[0, 0] = [0, 0.6, 0.4]  # greedy goes to level 0 ...
    probs[1, 0] = [0, 0.5, 0.5]
    probs[1, 1] = [0.1, 0.9, 0.0]  # ... but 0.4 * 0.9 beats 0.6 * 0.5
    assert decode_network_path(probs) == [1, 1]
    assert path_probability(probs, [1, 1]) == pytest.approx(0.36)
    assert top_k_paths(probs, 3) == [([1, 1], pytest.approx(0.36)), ([0, 0], 0.3),
                                     ([0, 1], 0.3)]


def test_known_path_is_recovered_from_betas():
    paper = GENOTYPES["autodeeplab"].network_path
    betas = np.zeros((len(paper), NUM_LEVELS, len(DIRECTIONS)), dtype=np.float32)
    previous = 0
    for layer, level in enumerate(paper):
        betas[layer, previous, DIRECTIONS.index(level - previous)] = 3.0
        previous = level
    alphas = np.zeros((num_edges(5), len(PRIMITIVES)), dtype=np.float32)
    assert tuple(genotype_from_arch(alphas, betas).network_path) == paper


def test_path_inputs_are_checked():
    probs = transition_mask(3).astype(np.float64) * 0.5
    with pytest.raises(ValueError, match="shape"):
        decode_network_path(probs[:, :3])
    with pytest.raises(ValueError, match="non-negative"):
        decode_network_path(-probs)
    with pytest.raises(ValueError, match="finite"):
        decode_network_path(np.where(probs > 0, np.nan, 0.0))
    bad = probs.copy()
    bad[0, 2, 1] = 0.5  # level 2 does not exist before layer 0
    with pytest.raises(ValueError, match="do not exist"):
        decode_network_path(bad)
    with pytest.raises(ValueError, match="not a valid network path"):
        path_probability(probs, [0, 2, 1])
    with pytest.raises(ValueError, match="layers"):
        path_probability(probs, [0, 1])
    assert top_k_paths(probs, 0) == []
    assert len(top_k_paths(probs[:1], 10)) == 2  # only two paths of one layer exist


# --- cell ----------------------------------------------------------------------------------

def alphas_for(cell, steps: int, strength: float = 6.0) -> np.ndarray:
    alphas = np.zeros((num_edges(steps), len(PRIMITIVES)), dtype=np.float32)
    for block, pairs in enumerate(cell):
        for inp, op in pairs:
            alphas[edge_offset(block) + inp, PRIMITIVES.index(op)] = strength
    return alphas


def test_known_cell_is_recovered():
    paper = GENOTYPES["autodeeplab"]
    betas = np.zeros((paper.num_layers, NUM_LEVELS, len(DIRECTIONS)), dtype=np.float32)
    decoded = genotype_from_arch(alphas_for(paper.cell, paper.steps), betas)
    # decode lists each block's inputs in index order; the paper's record keeps its own order.
    assert [sorted(pairs) for pairs in decoded.cell] == [sorted(p) for p in paper.cell]


def test_none_strongest_everywhere_is_never_chosen():
    steps = 3
    alphas = np.zeros((num_edges(steps), len(PRIMITIVES)), dtype=np.float32)
    alphas[:, NONE] = 10.0  # `none` dominates every edge
    # Second strongest per edge, by hand: block 1 keeps inputs 0 and 1; block 2 keeps 2 and 0;
    # block 3 keeps 3 and 1.
    second = {0: (0, "sep_conv_3x3", 3.0), 1: (1, "skip_connect", 2.0),
              2: (0, "max_pool_3x3", 2.5), 3: (1, "avg_pool_3x3", 1.0),
              4: (2, "atrous_conv_5x5", 4.0),
              5: (0, "sep_conv_5x5", 0.5), 6: (1, "atrous_conv_3x3", 3.5),
              7: (2, "skip_connect", 0.2), 8: (3, "sep_conv_3x3", 5.0)}
    for edge, (_, op, logit) in second.items():
        alphas[edge, PRIMITIVES.index(op)] = logit
    weights = torch.softmax(torch.from_numpy(alphas), dim=-1).numpy()
    assert decode_cell(weights) == [
        [(0, "sep_conv_3x3"), (1, "skip_connect")],
        [(0, "max_pool_3x3"), (2, "atrous_conv_5x5")],
        [(1, "atrous_conv_3x3"), (3, "sep_conv_3x3")],
    ]
    assert all(op != "none" for block in decode_cell(weights) for _, op in block)


def test_cell_strength_is_compared_across_edges_and_ties_are_stable():
    steps = 2
    weights = np.full((num_edges(steps), len(PRIMITIVES)), 1 / len(PRIMITIVES))
    # All tied: the lowest inputs and the lowest real operation.
    assert decode_cell(weights) == [[(0, "max_pool_3x3"), (1, "max_pool_3x3")]] * 2
    # One strong edge into block 2 from block 1 displaces H(l-1).
    weights[edge_offset(1) + 2] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.1]
    weights[edge_offset(1) + 0] = [0.5, 0.0, 0.0, 0.0, 0.3, 0.2, 0.0, 0.0]
    assert decode_cell(weights)[1] == [(0, "sep_conv_3x3"), (2, "atrous_conv_3x3")]


def test_cell_inputs_are_checked():
    with pytest.raises(ValueError, match="shape"):
        decode_cell(np.zeros((20, 7)))
    with pytest.raises(ValueError, match="edges"):
        decode_cell(np.zeros((19, len(PRIMITIVES))))
    with pytest.raises(ValueError, match="finite"):
        decode_cell(np.full((5, len(PRIMITIVES)), np.nan))
    assert [steps_for_edges(num_edges(s)) for s in range(1, 7)] == list(range(1, 7))


def test_genotype_from_arch_accepts_tensors_and_uses_the_one_normalisation():
    rng = np.random.default_rng(3)
    alphas = rng.normal(size=(num_edges(5), len(PRIMITIVES))).astype(np.float32)
    betas = rng.normal(size=(12, NUM_LEVELS, len(DIRECTIONS))).astype(np.float32)
    from_numpy = genotype_from_arch(alphas, betas)
    from_tensors = genotype_from_arch(torch.from_numpy(alphas).requires_grad_(),
                                      torch.from_numpy(betas))
    assert from_numpy == from_tensors
    weights, probs = arch_probabilities(alphas, betas)
    np.testing.assert_array_equal(
        probs, normalize_betas(torch.from_numpy(betas), torch.from_numpy(transition_mask(12))))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    assert from_numpy.network_path == tuple(decode_network_path(probs))
    with pytest.raises(ValueError, match="betas"):
        genotype_from_arch(alphas, betas[:, :3])


def test_edge_weights_of_a_partial_channel_search_choose_the_inputs():
    """PC-DARTS decoding: an edge's operation weights are scaled by its edge weight, so with
    equal alphas the two inputs with the largest edge logits are kept (brute force)."""
    steps = 4
    rng = np.random.default_rng(0)
    alphas = np.zeros((num_edges(steps), len(PRIMITIVES)))
    alphas[:, PRIMITIVES.index("sep_conv_3x3")] = 1.0
    edge_logits = rng.normal(size=num_edges(steps))
    betas = np.zeros((3, 4, 3))
    cell = genotype_from_arch(alphas, betas, edge_logits).cell
    for block in range(steps):
        logits = edge_logits[edge_offset(block):edge_offset(block) + 2 + block]
        assert [i for i, _ in cell[block]] == sorted(np.argsort(-logits)[:2].tolist())
        assert all(op == "sep_conv_3x3" for _, op in cell[block])
    without = genotype_from_arch(alphas, betas).cell
    assert [[i for i, _ in b] for b in without] == [[0, 1]] * steps  # ties: lowest inputs
