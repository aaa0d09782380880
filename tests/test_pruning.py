"""Selection by pruning (engine/pruning.py, decode_autodeeplab.py --select pruning): the lazy
greedy against a plain greedy that scores every pair again after every removal, a planted
answer that one-shot perturbation misses and pruning finds, the supernet's losses and the CLI."""
import copy
import json

import numpy as np
import pytest
import torch

from engine.genotype_io import read_genotype
from engine.perturbation import SCORED, mean_loss
from engine.pruning import cell_mask, prune, prune_supernet
from modeling.decoding import cell_from_scores, genotype_from_arch
from modeling.genotypes import Genotype
from modeling.operations import PRIMITIVES
from modeling.search_space import edge_offset, num_edges
from tests.test_perturbation import decode, decoded_by_alphas, random_batches
from tests.test_reliability import finished_search, search  # noqa: F401 (fixture)
from tests.test_supernet import TINY, tiny_model

MAX_POOL = PRIMITIVES.index("max_pool_3x3")


def quiet(line):
    pass


def plain_greedy(loss, steps):
    """The reference: after every removal, score every pair that may go again and remove the
    cheapest (ties to the lower edge, then operation)."""
    alive = np.zeros((num_edges(steps), len(PRIMITIVES)), dtype=bool)
    alive[:, SCORED] = True
    blocks = [range(edge_offset(b), edge_offset(b) + 2 + b) for b in range(steps)]
    while True:
        current, best = loss(alive), None
        for b, edges in enumerate(blocks):
            for e in edges:
                for o in np.flatnonzero(alive[e]):
                    alive[e, o] = False
                    if sum(alive[x].any() for x in edges) >= 2:
                        candidate = (loss(alive) - current, e, o)
                        best = candidate if best is None else min(best, candidate)
                    alive[e, o] = True
        if best is None:
            return [[(e - edges[0], PRIMITIVES[int(np.flatnonzero(alive[e])[0])])
                     for e in edges if alive[e].any()] for edges in blocks]
        alive[best[1], best[2]] = False


def stand_in_loss(steps, seed):
    """A loss in which pairs stand in for each other: random groups of pairs, each group
    costing a convex, decreasing function of how many of its pairs are left (a removal never
    makes another cheaper), plus a small cost of its own per pair."""
    rng = np.random.default_rng(seed)
    shape = (num_edges(steps), len(PRIMITIVES))
    group = rng.integers(0, 6, shape)
    scale = rng.uniform(0.5, 2.0, 6)
    own = rng.uniform(0, 0.05, shape)

    def loss(alive):
        left = np.bincount(group[alive], minlength=6)
        return float((scale * np.exp(-left / 3)).sum() + (own * ~alive).sum())
    return loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lazy_pruning_removes_what_full_rescoring_removes(seed):
    loss = stand_in_loss(3, seed)
    calls = []

    def counted(alive):
        calls.append(1)
        return loss(alive)

    cell, base_loss, cell_loss, removals, evaluations = prune(counted, 3, log=quiet)
    assert base_loss == loss(np.isin(np.arange(len(PRIMITIVES)), SCORED)[None].repeat(9, 0))
    assert cell == plain_greedy(loss, 3)
    assert evaluations == len(calls)
    assert cell_loss == pytest.approx(loss(cell_mask(cell, (9, len(PRIMITIVES))) > 0))
    pairs = 9 * len(SCORED)
    assert len(removals) == pairs - 6  # two pairs per block are left
    assert evaluations < pairs * (pairs - 6) / 4  # far fewer than scoring all after each
    for block, pairs_left in enumerate(cell):
        assert len(pairs_left) == 2 and pairs_left[0][0] < pairs_left[1][0]


def test_pruning_keeps_an_operation_whose_copies_stand_in_for_each_other():
    """The planted answer: every block needs max_pool_3x3 on at least one input, and any of its
    copies will do; other pairs each carry a little of their own. Removing one copy from the
    whole supernet costs nothing, so one-shot perturbation keeps other operations everywhere;
    pruning finds max_pool_3x3 in every block."""
    steps = 5
    rng = np.random.default_rng(0)
    own = rng.uniform(0.01, 0.05, (num_edges(steps), len(PRIMITIVES)))
    own[:, MAX_POOL] = 0

    def loss(alive):
        missing = sum(not alive[edge_offset(b):edge_offset(b) + 2 + b, MAX_POOL].any()
                      for b in range(steps))
        return float(missing + (own * ~alive).sum())

    everything = np.ones(own.shape, dtype=bool)
    rises = np.full(own.shape, -np.inf)
    for e, o in zip(*np.nonzero(everything)):
        if o in SCORED:
            everything[e, o] = False
            rises[e, o] = loss(everything) - loss(np.ones(own.shape, dtype=bool))
            everything[e, o] = True
    one_shot = cell_from_scores(rises, rises.max(axis=1))
    assert not any(op == "max_pool_3x3" for block in one_shot for _, op in block)

    cell, _, cell_loss, _, _ = prune(loss, steps, log=quiet)
    assert [sum(op == "max_pool_3x3" for _, op in block) for block in cell] == [1] * steps
    assert cell_loss == pytest.approx(loss(cell_mask(cell, own.shape) > 0))
    assert cell_loss < own.sum()  # no block lost it: that alone would cost 1 > 10 * 0.05


def test_pruning_a_supernet_scores_the_cell_it_returns_and_keeps_its_buffers():
    model = tiny_model(seed=2).double()
    with torch.no_grad():
        model.alphas.normal_(0, 1)
    batches = random_batches()
    before = copy.deepcopy(model.state_dict())
    pruning = prune_supernet(model, batches, log=quiet)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert pruning.base_loss == pytest.approx(mean_loss(model, batches))
    mask = torch.as_tensor(cell_mask(pruning.cell, tuple(model.alphas.shape)))
    assert pruning.cell_loss == pytest.approx(mean_loss(model, batches, mask), rel=1e-9)
    assert len(pruning.removals) == num_edges(TINY["steps"]) * len(SCORED) - 2 * TINY["steps"]
    Genotype([0] * 4, pruning.cell)  # a valid cell
    assert pruning.images == 4


def test_decode_select_pruning_writes_the_cell_it_pruned(tmp_path, capsys, finished_search):
    run = tmp_path / "run"
    checkpoint, alphas_json = decoded_by_alphas(run, finished_search)
    decode("--resume", checkpoint, "--select", "pruning", "--max-images", 2, "--no-plot")
    assert (run / "genotype.json").read_text() == alphas_json  # beside it, not over it
    out = run / "pruning"
    record = json.loads((out / "pruning.json").read_text())
    genotype = read_genotype(out / "genotype.json")
    assert [[list(p) for p in block] for block in genotype.cell] == record["cell"]
    assert record["images"] == 2 and record["evaluations"] > len(record["removals"])
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    by_alphas = genotype_from_arch(state["model"]["alphas"], state["model"]["betas"])
    assert genotype.network_path == by_alphas.network_path  # the path is still the betas'
    assert json.loads((out / "genotype.json").read_text())["cell_selection"] == "pruning"
    printed = capsys.readouterr().out
    assert "cell chosen by pruning on 2 validation images" in printed
    assert f"with only this cell {record['cell_loss']:.4f}" in printed


def test_cell_mask_keeps_exactly_the_cells_pairs():
    cell = [[(0, "sep_conv_3x3"), (1, "max_pool_3x3")], [(1, "skip_connect"), (2, "none")]]
    mask = cell_mask(cell, (num_edges(2), len(PRIMITIVES)))
    expected = np.zeros_like(mask)
    for e, op in [(0, "sep_conv_3x3"), (1, "max_pool_3x3"), (3, "skip_connect"), (4, "none")]:
        expected[e, PRIMITIVES.index(op)] = 1
    np.testing.assert_array_equal(mask, expected)
