"""The genotype record: the paper's architecture, JSON and array forms, one-line validation."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engine.genotype_io import (load_genotype_arrays, read_genotype, save_genotype,
                                save_genotype_arrays)
from modeling.genotypes import (GENOTYPE_NPY, GENOTYPES, NETWORK_PATH_NPY,
                                NETWORK_PATH_SPACE_NPY, Genotype, GenotypeError, count_paths,
                                get_genotype, random_genotype)
from modeling.operations import PRIMITIVES
from modeling.search_space import edge_offset
from utils.errors import UserError

PAPER = GENOTYPES["autodeeplab"]
SMALL = Genotype(network_path=(1, 2), cell=(((0, "skip_connect"), (1, "max_pool_3x3")),))


def test_paper_architecture_is_the_papers_figure_3():
    assert PAPER.network_path == (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)
    assert PAPER.strides == (4, 4, 4, 8, 16, 8, 16, 16, 32, 32, 16, 8)
    assert (PAPER.num_layers, PAPER.steps) == (12, 5)
    assert PAPER.cell[2] == ((3, "sep_conv_3x3"), (0, "sep_conv_3x3"))
    assert get_genotype("autodeeplab") is PAPER
    with pytest.raises(GenotypeError, match="unknown genotype 'nasnet'; known: autodeeplab"):
        get_genotype("nasnet")


def test_json_has_the_contract_shape():
    record = PAPER.to_json()
    assert record == {
        "format": "autodeeplab-genotype", "version": 1, "primitives": list(PRIMITIVES),
        "num_layers": 12, "steps": 5, "network_path": [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1],
        "cell": [[[0, "atrous_conv_5x5"], [1, "sep_conv_3x3"]],
                 [[0, "sep_conv_3x3"], [1, "atrous_conv_3x3"]],
                 [[3, "sep_conv_3x3"], [0, "sep_conv_3x3"]],
                 [[4, "sep_conv_5x5"], [2, "sep_conv_5x5"]],
                 [[3, "sep_conv_5x5"], [5, "atrous_conv_5x5"]]],
    }
    assert json.loads(json.dumps(record)) == record  # plain JSON types only


def test_json_round_trips_through_dict_and_file(tmp_path):
    for genotype in (PAPER, SMALL):
        assert Genotype.from_json(genotype.to_json()) == genotype
        save_genotype(genotype, tmp_path / "genotype.json")
        assert read_genotype(tmp_path / "genotype.json") == genotype
    extra = PAPER.to_json() | {"source": {"epoch": 3}, "path_probability": 0.1}
    assert Genotype.from_json(extra) == PAPER  # more keys are allowed


def test_record_is_immutable_hashable_and_accepts_lists():
    from_lists = Genotype(network_path=[1, 2], cell=[[[0, "skip_connect"], [1, "max_pool_3x3"]]])
    assert from_lists == SMALL and hash(from_lists) == hash(SMALL)
    assert from_lists.network_path == (1, 2) and isinstance(from_lists.cell[0][0], tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SMALL.network_path = (0,)
    assert Genotype(network_path=np.array([0, 1]), cell=SMALL.cell).network_path == (0, 1)


def test_arrays_of_the_paper_architecture():
    network_path, space, genotype = PAPER.to_arrays()
    assert network_path.dtype == np.int64 and network_path.tolist() == list(PAPER.network_path)
    assert space.shape == (12, 4, 3) and space.sum() == 12
    # Layer 0 stays at the stem's level 0 (d = 1); layer 3 moves 0 -> 1 (d = 2);
    # layer 5 moves 2 -> 1 (d = 0).
    assert space[0, 0, 1] == space[3, 0, 2] == space[5, 2, 0] == 1
    assert (space.sum(axis=(1, 2)) == 1).all()
    assert genotype.shape == (10, 2) and genotype.dtype == np.int64
    op = PRIMITIVES.index
    assert genotype[0].tolist() == [0, op("atrous_conv_5x5")]
    assert genotype[4].tolist() == [edge_offset(2) + 3, op("sep_conv_3x3")]  # block 3, input 3
    assert genotype[9].tolist() == [edge_offset(4) + 5, op("atrous_conv_5x5")]
    assert Genotype.from_arrays(network_path, space, genotype) == PAPER
    assert Genotype.from_arrays(network_path, None, genotype) == PAPER


def test_array_files_round_trip(tmp_path):
    written = save_genotype_arrays(PAPER, tmp_path)
    assert [p.name for p in written] == [NETWORK_PATH_NPY, NETWORK_PATH_SPACE_NPY, GENOTYPE_NPY]
    assert load_genotype_arrays(tmp_path) == PAPER
    np.testing.assert_array_equal(np.load(tmp_path / NETWORK_PATH_NPY), PAPER.network_path)
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporaries


def test_inconsistent_arrays_are_rejected(tmp_path):
    network_path, space, genotype = PAPER.to_arrays()
    bad = genotype.copy()
    bad[2, 0] = 0  # edge 0 enters block 1, not block 2
    with pytest.raises(GenotypeError, match="does not enter block 2"):
        Genotype.from_arrays(network_path, space, bad)
    bad = genotype.copy()
    bad[0, 1] = len(PRIMITIVES)
    with pytest.raises(GenotypeError, match="operation index 8"):
        Genotype.from_arrays(network_path, space, bad)
    with pytest.raises(GenotypeError, match="one-hot"):
        Genotype.from_arrays(network_path, np.roll(space, 1, axis=0), genotype)
    with pytest.raises(GenotypeError, match=r"\(2 \* steps, 2\)"):
        Genotype.from_arrays(network_path, space, genotype[:3])
    with pytest.raises(UserError, match=str(tmp_path / NETWORK_PATH_NPY)):
        load_genotype_arrays(tmp_path)


def _json(**changes):
    record = SMALL.to_json()
    record.update(changes)
    return record


CELL = [[0, "skip_connect"], [1, "max_pool_3x3"]]
INVALID = {
    "unknown operation": (_json(cell=[[[0, "sep_conv_7x7"], [1, "skip_connect"]]]),
                          "unknown operation 'sep_conv_7x7'"),
    "none operation": (_json(cell=[[[0, "none"], [1, "skip_connect"]]]), "uses 'none'"),
    "steps disagree": (_json(steps=5), "steps=5 but len(cell) = 1"),
    "layers disagree": (_json(num_layers=12), "num_layers=12 but len(network_path) = 2"),
    "three inputs": (_json(cell=[CELL + [[1, "skip_connect"]]]), "has 3 inputs"),
    "input not yet there": (_json(cell=[CELL, [[0, "skip_connect"], [3, "skip_connect"]]]),
                            "block 2 reads input 3, which does not exist yet; block 2 can read 0 = H(l-2), "
                            "1 = H(l-1), 2 = block 1"),
    "same input twice": (_json(cell=[[[1, "skip_connect"], [1, "max_pool_3x3"]]]),
                         "reads input 1 twice"),
    "no blocks": (_json(cell=[], steps=0), "no blocks"),
    "starts above level 1": (_json(network_path=[2, 2]), "starts at level 2"),
    "jumps two levels": (_json(network_path=[0, 2]), "jumps from level 0 to 2"),
    "leaves the levels": (_json(network_path=[1, 2, 3, 4]), "level 4 at layer 3"),
    "negative level": (_json(network_path=[0, -1]), "level -1 at layer 1"),
    "empty path": (_json(network_path=[], num_layers=0), "network path is empty"),
    "level not an integer": (_json(network_path=[0, 1.0]), "must be an integer"),
    "level is a bool": (_json(network_path=[True, 1]), "must be an integer"),
    "malformed cell": (_json(cell=[[0, 1]]), "malformed"),
    "wrong format": (_json(format="darts-genotype"), "format 'darts-genotype'"),
    "wrong version": (_json(version=2), "version 2"),
    "missing cell": ({k: v for k, v in SMALL.to_json().items() if k != "cell"}, "no cell"),
    "not an object": ([1, 2], "JSON object"),
}


def test_genotype_names_operations_whatever_list_it_was_searched_over():
    # "primitives" records the search space; the operations are read by name.
    reordered = _json(primitives=list(reversed(PRIMITIVES)) + ["conv_7x7"])
    assert Genotype.from_json(reordered) == Genotype.from_json(_json())


def test_array_form_keeps_its_operation_indices():
    # genotype.npy rows name operations by index; the indices are those of the best-known
    # public implementation's files, whatever the table's order.
    *_, rows = Genotype((0,), (((0, "atrous_conv_5x5"), (1, "skip_connect")),)).to_arrays()
    assert rows.tolist() == [[0, 7], [1, 3]]


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_genotypes_give_one_line_errors(name):
    record, message = INVALID[name]
    with pytest.raises(GenotypeError) as info:
        Genotype.from_json(record)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(UserError, match=f"{missing} does not exist"):
        read_genotype(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "autodeeplab-genotype", ')
    with pytest.raises(UserError, match=f"{broken} is not valid JSON"):
        read_genotype(broken)
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps(_json(network_path=[3])))
    with pytest.raises(UserError) as info:
        read_genotype(invalid)
    assert str(invalid) in str(info.value) and "starts at level 3" in str(info.value)
    assert "\n" not in str(info.value)


def all_paths(num_layers):
    """Brute force: every level sequence that Genotype accepts."""
    import itertools
    for path in itertools.product(range(4), repeat=num_layers):
        try:
            Genotype(path, SMALL.cell)
        except GenotypeError:
            continue
        yield path


def test_path_counts_equal_brute_force_enumeration():
    for num_layers in (1, 2, 3, 5):
        paths = list(all_paths(num_layers))
        counts = count_paths(num_layers)
        assert sum(counts[-1]) == len(paths)
        for level in range(4):
            assert counts[-1, level] == sum(p[-1] == level for p in paths)


def test_random_genotype_is_valid_and_uniform_over_paths():
    rng = np.random.default_rng(0)
    paths = list(all_paths(4))  # 26 paths
    draws = [random_genotype(4, 3, rng) for _ in range(5200)]
    seen = {}
    for genotype in draws:
        assert genotype.steps == 3 and genotype.num_layers == 4  # validated on construction
        seen[genotype.network_path] = seen.get(genotype.network_path, 0) + 1
    assert set(seen) == set(paths)
    expected = len(draws) / len(paths)  # 200 each; 5 sigma ~ 70
    assert all(abs(n - expected) < 5 * expected ** 0.5 for n in seen.values()), seen
    # Every input pair of block 3 (6 unordered pairs of 4 states) and every operation appears.
    pairs = {tuple(i for i, _ in g.cell[2]) for g in draws}
    assert pairs == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}
    assert {op for g in draws for _, op in g.cell[0]} == set(PRIMITIVES) - {"none"}
    again = [random_genotype(4, 3, np.random.default_rng(0)) for _ in range(2)]
    assert again[0] == again[1] == draws[0]  # the seed decides
