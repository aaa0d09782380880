"""The architectures shipped in genotypes/: each loads, says how it was found, and is taken by
name wherever a genotype file is."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.genotype_io import load_genotype, read_genotype, save_genotype, shipped_genotypes
from modeling.genotypes import GENOTYPES, Genotype
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_genotype_loads_and_says_how_it_was_found():
    shipped = shipped_genotypes()
    assert {"autodeeplab", "camvid-cpu-s0", "camvid-cpu-s1", "planted-context",
            "planted-operation", "planted-sparks"} <= set(shipped)
    for name, path in shipped.items():
        found = json.loads(path.read_text())["found"]
        assert isinstance(found, str) and len(found) > 40, name
        assert load_genotype(name) == read_genotype(path)


def test_the_papers_file_is_the_papers_architecture():
    assert load_genotype("autodeeplab") == GENOTYPES["autodeeplab"]


def test_a_file_wins_over_a_name_and_an_unknown_name_lists_the_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_genotype(Genotype((0, 1), GENOTYPES["autodeeplab"].cell), tmp_path / "autodeeplab")
    assert load_genotype("autodeeplab").network_path == (0, 1)
    with pytest.raises(UserError, match="does not exist; .* shipped name: autodeeplab, "):
        load_genotype("no-such-genotype")


def test_train_takes_a_shipped_name():
    res = subprocess.run([sys.executable, "train.py", "--genotype", "planted-context",
                          "--summary", "--summary-size", "64", "64", "--filter-multiplier", "4"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    expected = load_genotype("planted-context").network_path
    assert json.loads(res.stdout)["network_path"] == list(expected)
