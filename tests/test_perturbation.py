"""Selection by perturbation (engine/perturbation.py, decode_autodeeplab.py --select
perturbation): the supernet's operation mask against the plain supernet with the operation
taken out, scores on edges whose answer is known, the cell they decode, and the CLI."""
import copy
import json

import numpy as np
import pytest
import torch

from config_utils.decode_args import get_args_parser
from decode_autodeeplab import main as decode_main
from engine.genotype_io import read_genotype
from engine.perturbation import (PerturbationScores, decode_cell_by_perturbation, mean_loss,
                                 perturbation_scores, stacked_batches)
from modeling.decoding import genotype_from_arch
from modeling.operations import PRIMITIVES, Zero
from modeling.plain_supernet import copy_fast_to_plain
from modeling.search_space import edge_offset, num_edges
from modeling.supernet import AutoDeepLabSearch, SupernetConfig
from tests.test_decode_cli import search_state
from tests.test_reliability import error_line, finished_search, search  # noqa: F401 (fixture)
from tests.test_supernet import TINY, tiny_model
from utils.checkpoint import save_checkpoint

NONE = PRIMITIVES.index("none")


def decode(*argv):
    return decode_main(get_args_parser().parse_args([str(a) for a in argv]))


def test_masked_forward_equals_plain_supernet_without_those_operations(device):
    model = tiny_model(seed=5).double().to(device)
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_(0, 1)
    plain = AutoDeepLabSearch(SupernetConfig(**TINY, implementation="plain")).double().to(device)
    copy_fast_to_plain(model, plain)
    removed = [(0, "max_pool_3x3"), (4, "sep_conv_3x3"), (4, "atrous_conv_5x5")]
    mask = torch.ones_like(model.alphas)
    for edge, name in removed:
        mask[edge, PRIMITIVES.index(name)] = 0
        for cell in plain.cells.values():  # the reference: the operation replaced by zero
            cell.edges[edge].ops[name] = Zero()
    x = torch.randn(2, 3, 40, 32, dtype=torch.float64, device=device)
    masked = model(x, operation_mask=mask)
    torch.testing.assert_close(masked, plain(x), rtol=1e-9, atol=1e-10)
    assert not torch.allclose(masked, model(x))  # the removed operations did contribute
    torch.testing.assert_close(model(x, operation_mask=torch.ones_like(mask)), model(x))


def random_batches(count=2, size=(32, 24), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 3, *size, generator=generator, dtype=torch.float64),
             torch.randint(0, TINY["num_classes"], (2, *size), generator=generator))
            for _ in range(count)]


@pytest.mark.parametrize("batch_statistics", [True, False])
def test_an_edge_that_carries_nothing_scores_zero(batch_statistics):
    model = tiny_model(seed=1).double()  # loss differences far above rounding
    silent = 3  # `none` takes all the weight of this edge: removing anything there is a no-op
    with torch.no_grad():
        model.alphas.normal_(0, 1)
        model.alphas[silent] = 0.0
        model.alphas[silent, NONE] = 60.0
    batches = random_batches()
    before = copy.deepcopy(model.state_dict())
    scores = perturbation_scores(model, batches, log=lambda line: None, show_progress=False,
                                 batch_statistics=batch_statistics)
    for name, value in model.state_dict().items():  # running statistics included
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert scores.base_loss == pytest.approx(
        mean_loss(model, batches, batch_statistics=batch_statistics))
    assert scores.images == 4
    assert abs(scores.edge[silent]) < 1e-13
    assert np.nanmax(np.abs(scores.operation[silent])) < 1e-13
    others = np.delete(np.arange(num_edges(TINY["steps"])), silent)
    assert np.abs(scores.edge[others]).min() > 1e-9  # every other edge matters to the loss
    assert np.isnan(scores.operation[:, NONE]).all() and np.isnan(scores.everywhere[NONE])
    assert not np.isnan(np.delete(scores.operation, NONE, axis=1)).any()
    # One operation removed everywhere is scored against the same base loss.
    mask = torch.ones_like(model.alphas)
    mask[:, PRIMITIVES.index("skip_connect")] = 0
    assert scores.everywhere[PRIMITIVES.index("skip_connect")] == pytest.approx(
        mean_loss(model, batches, mask, batch_statistics=batch_statistics) - scores.base_loss)


def test_decoded_cell_keeps_the_largest_rises_with_ties_to_the_lower_index():
    steps = 3
    operation = np.zeros((num_edges(steps), len(PRIMITIVES)))
    operation[:, NONE] = np.nan
    edge = np.zeros(num_edges(steps))
    # block 1: inputs 0, 1 (both kept); block 2: input 2 and input 0 matter most;
    # block 3: inputs 1, 2, 3 tie at the top: the lower two are kept.
    operation[edge_offset(0) + 0, PRIMITIVES.index("max_pool_3x3")] = 0.3
    operation[edge_offset(0) + 1, PRIMITIVES.index("sep_conv_5x5")] = 0.1
    edge[edge_offset(1) + np.array([0, 1, 2])] = [0.2, 0.1, 0.5]
    operation[edge_offset(1) + 2, PRIMITIVES.index("skip_connect")] = 0.4
    operation[edge_offset(1) + 2, PRIMITIVES.index("avg_pool_3x3")] = 0.4
    edge[edge_offset(2) + np.array([1, 2, 3])] = 0.7
    scores = PerturbationScores(1.0, 4, True, operation, edge, np.zeros(len(PRIMITIVES)))
    first = PRIMITIVES[min(i for i in range(len(PRIMITIVES)) if i != NONE)]
    assert decode_cell_by_perturbation(scores) == [
        [(0, "max_pool_3x3"), (1, "sep_conv_5x5")],
        [(0, first), (2, min(("skip_connect", "avg_pool_3x3"), key=PRIMITIVES.index))],
        [(1, first), (2, first)]]


def test_stacked_batches_join_images_of_one_size_up_to_the_batch_size():
    loader = [(torch.full((1, 3, 8, 8), float(i)), torch.full((1, 8, 8), i)) for i in range(5)]
    loader.insert(3, (torch.zeros(1, 3, 6, 8), torch.zeros(1, 6, 8, dtype=torch.long)))
    batches = stacked_batches(loader, torch.device("cpu"), batch_size=2)
    assert [tuple(images.shape) for images, _ in batches] == [
        (2, 3, 8, 8), (1, 3, 8, 8), (1, 3, 6, 8), (2, 3, 8, 8)]
    assert [targets[:, 0, 0].tolist() for _, targets in batches] == [[0, 1], [2], [0], [3, 4]]
    assert sum(len(b[0]) for b in stacked_batches(loader, torch.device("cpu"), 4, 3)) == 3
    # Batch statistics need two images: a single one joins the batch before, of its size.
    joined = stacked_batches(loader[:3] + loader[4:], torch.device("cpu"), 2, min_batch=2)
    assert [targets[:, 0, 0].tolist() for _, targets in joined] == [[0, 1], [2, 3, 4]]
    with pytest.raises(ValueError, match=r"a batch of 1 image\(s\) of size \(6, 8\) is left"):
        stacked_batches(loader, torch.device("cpu"), 2, min_batch=2)


def test_decode_select_perturbation_writes_the_cell_it_scored(tmp_path, capsys, finished_search):
    decode("--resume", finished_search, "--select", "perturbation", "--out-dir", tmp_path,
           "--no-plot", "--max-images", 3, "--batch-size", 2)
    out = capsys.readouterr().out
    assert "cell chosen by perturbation on 3 validation images" in out
    record = json.loads((tmp_path / "genotype.json").read_text())
    assert record["cell_selection"] == "perturbation"
    scores = json.loads((tmp_path / "perturbation.json").read_text())
    operation = np.array([[np.nan if v is None else v for v in row]
                          for row in scores["operation"]])
    assert scores["images"] == 3 and operation.shape[1] == len(PRIMITIVES)
    assert np.isnan(operation[:, NONE]).all()
    assert scores["batch_statistics"] is True  # DARTS-PT's choice, the default
    expected = decode_cell_by_perturbation(PerturbationScores(
        scores["base_loss"], 3, True, operation, np.array(scores["edge"]), np.zeros(len(PRIMITIVES))))
    genotype = read_genotype(tmp_path / "genotype.json")
    assert [list(block) for block in genotype.cell] == expected
    state = torch.load(finished_search, map_location="cpu", weights_only=False)
    by_alphas = genotype_from_arch(state["model"]["alphas"], state["model"]["betas"])
    assert genotype.network_path == by_alphas.network_path  # the path is still the betas'
    assert scores["alpha_cell"] == [[list(pair) for pair in block] for block in by_alphas.cell]


@pytest.mark.parametrize("argv, words", [
    (["--data-root", "somewhere"], "--data-root applies only with --select perturbation"),
    (["--max-images", "4"], "--max-images applies only with --select perturbation"),
    (["--device", "cpu"], "--device applies only with --select perturbation"),
    (["--batch-norm", "running"], "--batch-norm applies only with --select perturbation"),
])
def test_scoring_flags_without_perturbation_are_an_error(tmp_path, capsys, argv, words):
    checkpoint = tmp_path / "checkpoint.pth.tar"
    save_checkpoint(search_state(), checkpoint)
    line = error_line(capsys, decode, "--resume", checkpoint, "--no-plot", *argv)
    assert words in line
    assert not (tmp_path / "genotype.json").exists()


def test_perturbation_of_a_checkpoint_it_cannot_rebuild_names_it(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint.pth.tar"
    save_checkpoint(search_state(), checkpoint)  # version 1: another stem
    line = error_line(capsys, decode, "--resume", checkpoint, "--select", "perturbation")
    assert str(checkpoint) in line and "has version 1" in line
    assert "decode it without --select perturbation" in line
    assert not (tmp_path / "genotype.json").exists()


@pytest.mark.parametrize("flag", ["--max-images", "--batch-size"])
def test_counts_below_one_are_refused(capsys, flag):
    with pytest.raises(SystemExit) as info:
        get_args_parser().parse_args(["--resume", "x", flag, "0"])
    assert info.value.code == 2
    assert f"{flag}: must be >= 1, got 0" in capsys.readouterr().err


def test_one_image_with_batch_statistics_is_refused_with_the_fix(tmp_path, capsys,
                                                                  finished_search):
    line = error_line(capsys, decode, "--resume", finished_search, "--select", "perturbation",
                      "--out-dir", tmp_path, "--max-images", 1)
    assert "a batch of 1 image(s) of size (96, 96) is left" in line  # whole val images
    assert "--max-images" in line and "--batch-norm running" in line
    assert not (tmp_path / "genotype.json").exists()


def decoded_by_alphas(run, finished_search):
    """A copy of the finished search's checkpoint in folder `run`, decoded by the alphas
    there; the checkpoint's path and the alphas' genotype.json as text."""
    run.mkdir()
    checkpoint = run / "checkpoint.pth.tar"
    checkpoint.write_bytes(finished_search.read_bytes())
    decode("--resume", checkpoint, "--no-plot")
    return checkpoint, (run / "genotype.json").read_text()


def test_by_default_the_perturbation_decode_goes_beside_the_alphas_one(tmp_path, capsys,
                                                                      finished_search):
    run = tmp_path / "run"
    checkpoint, by_alphas = decoded_by_alphas(run, finished_search)
    decode("--resume", checkpoint, "--select", "perturbation", "--no-plot", "--max-images", 2)
    assert (run / "genotype.json").read_text() == by_alphas  # not overwritten
    record = json.loads((run / "perturbation" / "genotype.json").read_text())
    assert record["cell_selection"] == "perturbation"
    assert (run / "perturbation" / "perturbation.json").exists()
    assert f"wrote {run / 'perturbation' / 'genotype.json'}" in capsys.readouterr().out


# ------------------------------------------- DARTS-PT's progressive form (bench exploration)


def test_progressive_selection_without_tuning_starts_from_the_one_shot_scores():
    """Its first edge is scored on the untouched supernet: the one-shot scores of that edge;
    each edge keeps its largest rise, each block two inputs."""
    from bench.progressive_perturbation import progressive_selection
    model = tiny_model(seed=3).double()  # loss differences far above rounding
    batches = random_batches()
    one_shot = perturbation_scores(model, batches, show_progress=False)
    cell, decisions = progressive_selection(model, batches, tune=lambda mask: None,
                                            log=lambda line: None)
    first = decisions[0]["rises"]
    assert [first[PRIMITIVES[o]] for o in range(len(PRIMITIVES)) if o != NONE] == \
        pytest.approx([v for v in one_shot.operation[0] if not np.isnan(v)], abs=1e-6)
    edges = model.alphas.shape[0]
    assert len(decisions) == edges + len(cell)
    for decision in decisions[:edges]:
        rises = decision["rises"]
        assert decision["kept"] == max(rises, key=rises.get) and "none" not in rises
    for block, pairs in enumerate(cell):
        assert [i for i, _ in pairs] == decisions[edges + block]["kept"]
        assert len(pairs) == 2 and all(0 <= i < block + 2 for i, _ in pairs)
        assert all(op == decisions[edge_offset(block) + i]["kept"] for i, op in pairs)


def test_progressive_script_fine_tunes_and_records_its_decisions(tmp_path, finished_search):
    from bench.progressive_perturbation import main as progressive_main
    before = torch.load(finished_search, map_location="cpu", weights_only=False)["model"]
    record = progressive_main([str(finished_search), "--tune-steps", "1", "--max-images", "4",
                               "--batch-size", "2", "--json", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text())["cell"] == \
        [[list(pair) for pair in block] for block in record["cell"]]
    assert record["images"] == 4 and np.isfinite(record["final_loss"])
    assert record["alpha_cell"] == genotype_from_arch(before["alphas"], before["betas"]).cell
    assert "found" not in record  # not a planted task
    after = torch.load(finished_search, map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the checkpoint is untouched
