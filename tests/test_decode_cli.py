"""decode_autodeeplab.py as a user runs it: outputs of a search checkpoint, one-line errors.

The decode of a checkpoint and the four bad files run as subprocesses (the real entry point,
exit codes included), all started at once by one fixture because each pays for importing
torch. Variants that only differ in flags or checkpoint contents call `main` in-process.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from config_utils.decode_args import get_args_parser
from decode_autodeeplab import main
from engine.genotype_io import load_genotype_arrays, read_genotype
from modeling.decoding import arch_probabilities, genotype_from_arch, top_k_paths
from modeling.genotypes import Genotype
from modeling.operations import PRIMITIVES
from modeling.search_space import DIRECTIONS, NUM_LEVELS, level_stride, num_edges
from utils.checkpoint import RETRAIN_KIND, SEARCH_KIND, save_checkpoint
from utils.errors import EXIT_USER_ERROR

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "decode_autodeeplab.py"
NUM_LAYERS, STEPS = 12, 5
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BAD_FILES = ("truncated", "text", "retrain", "missing")


def search_state(seed: int = 0, **model_overrides) -> dict:
    """A search checkpoint as train_autodeeplab.py writes it, with random architecture."""
    generator = torch.Generator().manual_seed(seed)
    model = {"alphas": 1e-3 * torch.randn(num_edges(STEPS), len(PRIMITIVES), generator=generator),
             "betas": torch.randn(NUM_LAYERS, NUM_LEVELS, len(DIRECTIONS), generator=generator),
             "cells.0.weight": torch.zeros(2, 2)}
    model.update(model_overrides)
    return {"kind": SEARCH_KIND, "version": 1, "model": model,
            "model_args": {"num_classes": 3, "num_layers": NUM_LAYERS, "filter_multiplier": 8,
                           "block_multiplier": 5, "steps": STEPS},
            "epoch": 4, "global_step": 40, "args": {"dataset": "synthetic"}, "genotype": None}


def expected_genotype(checkpoint: Path) -> Genotype:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return genotype_from_arch(state["model"]["alphas"], state["model"]["betas"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    files = {"search": root / "run" / "checkpoint.pth.tar",
             "truncated": root / "truncated.pth.tar",
             "text": root / "notes.txt",
             "retrain": root / "retrain.pth.tar",
             "missing": root / "missing" / "checkpoint.pth.tar"}
    save_checkpoint(search_state(), files["search"])
    data = files["search"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["text"].write_text("this is not a checkpoint\n")
    save_checkpoint({"kind": RETRAIN_KIND, "version": 1, "model": {}, "genotype": {}},
                    files["retrain"])
    processes = {name: subprocess.Popen(
        [sys.executable, str(SCRIPT), "--resume", str(path)], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name, path in files.items()}
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        results[name] = (process.returncode, stdout, stderr)
    return files, results


def test_decode_writes_every_output_next_to_the_checkpoint(runs):
    files, results = runs
    code, stdout, stderr = results["search"]
    assert code == 0, stderr
    folder = files["search"].parent
    expected = expected_genotype(files["search"])

    assert read_genotype(folder / "genotype.json") == expected
    assert load_genotype_arrays(folder) == expected
    network_path = np.load(folder / "network_path.npy")
    assert network_path.tolist() == list(expected.network_path)
    assert np.load(folder / "network_path_space.npy").shape == (NUM_LAYERS, NUM_LEVELS, 3)
    assert np.load(folder / "genotype.npy").shape == (2 * STEPS, 2)
    png = (folder / "architecture.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 20_000

    # The summary: strides of the path, every block, the path's probability and the others.
    strides = " ".join(f"{level_stride(level):>2}" for level in expected.network_path)
    assert strides in stdout
    for block in range(1, STEPS + 1):
        assert f"block {block}:" in stdout
    state = torch.load(files["search"], map_location="cpu", weights_only=True)
    _, probs = arch_probabilities(state["model"]["alphas"], state["model"]["betas"])
    top = top_k_paths(probs, 5)
    assert f"probability {top[0][1]:.4g}" in stdout
    assert "next best paths" in stdout and f"{top[4][1]:.4g}" in stdout
    assert "filter_multiplier=8" in stdout and "epoch 4" in stdout


@pytest.mark.parametrize("name, words", [
    ("truncated", "cannot be read"),
    ("text", "cannot be read"),
    ("retrain", "not a search checkpoint"),
    ("missing", "does not exist"),
])
def test_bad_files_give_one_error_line_and_exit_2(runs, name, words):
    files, results = runs
    code, _, stderr = results[name]
    assert code == EXIT_USER_ERROR
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and str(files[name]) in lines[0]
    assert words in lines[0]


def decode_in_process(*argv) -> None:
    main(get_args_parser().parse_args([str(a) for a in argv]))


def test_best_checkpoint_into_another_folder(tmp_path, capsys):
    checkpoint = tmp_path / "run" / "best.pth.tar"
    save_checkpoint(search_state(seed=1), checkpoint)
    out = tmp_path / "elsewhere"
    decode_in_process("--resume", checkpoint, "--out-dir", out, "--no-plot", "--top-k", 3)
    expected = expected_genotype(checkpoint)
    assert read_genotype(out / "genotype.json") == expected
    assert load_genotype_arrays(out) == expected
    assert not (out / "architecture.png").exists()  # --no-plot
    assert not (checkpoint.parent / "genotype.json").exists()
    stdout = capsys.readouterr().out
    assert " 3. " in stdout and " 4. " not in stdout  # --top-k 3: ranks 2 and 3 listed


def _bad_search_state(problem: str) -> dict:
    state = search_state()
    if problem == "no_alphas":
        del state["model"]["alphas"], state["model"]["betas"]
    elif problem == "shape":
        state["model_args"]["num_layers"] = 8
    elif problem == "nan":
        state["model"]["alphas"][3, 2] = float("nan")
    elif problem == "version":
        state["version"] = 7
    elif problem == "no_model_args":
        del state["model_args"]
    return state


@pytest.mark.parametrize("problem, words", [
    ("no_alphas", "is not a search checkpoint: no alphas/betas; decode needs the "
                  "checkpoint.pth.tar of train_autodeeplab.py"),
    ("shape", "but its model_args (num_layers=8, steps=5) need"),
    ("nan", "non-finite alphas"),
    ("version", "has version 7"),
    ("no_model_args", "no model_args"),
])
def test_bad_search_checkpoints_give_one_error_line(tmp_path, capsys, problem, words):
    checkpoint = tmp_path / "checkpoint.pth.tar"
    save_checkpoint(_bad_search_state(problem), checkpoint)
    with pytest.raises(SystemExit) as info:
        decode_in_process("--resume", checkpoint, "--no-plot")
    assert info.value.code == EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(checkpoint) in lines[0] and words in lines[0]
    assert not (tmp_path / "genotype.json").exists()


def test_help_shows_defaults():
    text = get_args_parser().format_help()
    assert "--out-dir" in text and "--top-k" in text and "(default: 5)" in text
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--resume", "x", "--top-k", "-1"])
