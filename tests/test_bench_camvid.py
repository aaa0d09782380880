"""bench/camvid.py, the CamVid evidence protocol, at its smoke size: every stage through the
public command lines, the table and plots, a second run that finds everything done."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "camvid.py"


def bench(*argv, timeout=900):
    return subprocess.run([sys.executable, str(BENCH), *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_protocol_records_rows_table_plots_and_continues(tmp_path, camvid_root):
    out, results = tmp_path / "runs", tmp_path / "results"
    argv = ["--protocol", "smoke", "--num-random", "1", "--search-seeds", "0",
            "--data-root", camvid_root, "--out-dir", out, "--results-dir", results,
            "--perturbation"]
    first = bench(*argv)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    rows = list(csv.DictReader(open(results / "results.csv")))
    # The paper first, then random and searched stages alternate; each search's network
    # with its cell chosen by perturbation follows it.
    assert [r["arch"] for r in rows] == ["paper", "random-1", "searched-s0", "searched-pt-s0"]
    assert [r["group"] for r in rows] == ["paper", "random", "searched",
                                          "searched-perturbation"]
    class_columns = [k for k in rows[0] if k.startswith("iou_")]
    assert len(class_columns) == 11 and "iou_Sky" in class_columns
    for row in rows:
        assert 0.0 <= float(row["miou"]) <= 1.0 and float(row["params_m"]) > 0
        assert float(row["multi_adds_g"]) > 0 and float(row["train_s"]) > 0
        # val evaluated every 2 of 4 iterations; the last evaluation is the reported model's
        curve = dict(item.split(":") for item in row["miou_curve"].split())
        assert list(curve) == ["2", "4"]
        assert float(curve["4"]) == pytest.approx(float(row["miou"]), abs=1e-4)
    assert rows[0]["network_path"] == "0 0 0 1 2 1 2 2 3 3 2 1"  # the paper's
    # The searched and the random networks share the search's L.
    assert {len(r["network_path"].split()) for r in rows[1:]} == {3}
    searches = list(csv.DictReader(open(results / "search.csv")))
    assert [s["search_seed"] for s in searches] == ["0"]
    assert searches[0]["network_path"] == rows[2]["network_path"] == rows[3]["network_path"]
    scores = json.loads((results / "genotypes" / "searched-pt-s0.perturbation.json").read_text())
    assert scores["images"] == 4 and scores["checkpoint"].endswith("checkpoint.pth.tar")
    assert json.loads((results / "genotypes" / "searched-pt-s0.json").read_text())["cell"] == \
        scores["cell"]
    for name in ("paper", "random-1", "searched-s0", "searched-pt-s0"):
        assert (results / "genotypes" / f"{name}.json").exists(), name
    table = (results / "results.md").read_text()
    assert "| random-1 |" in table and "Sky" in table and "not yet decided" in table
    for picture in ("curves.png", "miou_vs_multiadds.png", "search.png",
                    "genotypes/searched-s0.png"):
        assert (results / picture).stat().st_size > 1000, picture

    # On another machine, with the recorded rows only: nothing is trained again, and the
    # random architecture is the recorded one.
    genotype = (results / "genotypes" / "random-1.json").read_text()
    shutil.rmtree(out)
    again = bench(*argv)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "retrain " not in again.stdout and "search " not in again.stdout
    assert list(csv.DictReader(open(results / "results.csv"))) == rows
    assert (results / "genotypes" / "random-1.json").read_text() == genotype

    # A selection added later, on a machine without the run folders: the search is run
    # again to be decoded, and only the new network is retrained.
    later = bench(*argv, "--pruning")
    assert later.returncode == 0, later.stdout[-2000:] + later.stderr[-2000:]
    assert "search seed 0" in later.stdout and "retrain searched-s0" not in later.stdout
    now = list(csv.DictReader(open(results / "results.csv")))
    assert now[:4] == rows
    assert [(r["arch"], r["group"]) for r in now[4:]] == [("searched-pruning-s0",
                                                           "searched-pruning")]
    assert now[4]["network_path"] == rows[2]["network_path"]  # the same search, again
    record = json.loads((results / "genotypes" / "searched-pruning-s0.pruning.json").read_text())
    assert record["images"] == 4
    assert json.loads((results / "genotypes" / "searched-pruning-s0.json").read_text())[
        "cell"] == record["cell"]
    assert len(list(csv.DictReader(open(results / "search.csv")))) == 1


def rows_of(group, mious, curves=None):
    return [{"arch": f"{group}-{i}", "group": group, "miou": str(m),
             "miou_curve": curves[i] if curves else ""} for i, m in enumerate(mious)]


def test_verdict_compares_the_gap_with_the_larger_spread():
    sys.path.insert(0, str(REPO))
    from bench.camvid import verdict
    clear = "\n".join(verdict(rows_of("searched", [0.40, 0.41, 0.42])
                              + rows_of("random", [0.30, 0.31, 0.32])))
    assert "+10.0 points" in clear and "**yes**" in clear
    close = "\n".join(verdict(rows_of("searched", [0.30, 0.40]) + rows_of("random", [0.31, 0.35])))
    assert "**no**" in close
    assert "not yet decided" in "\n".join(verdict(rows_of("searched", [0.4])
                                                  + rows_of("random", [0.3, 0.2])))
    both = "\n".join(verdict(rows_of("searched", [0.30, 0.40]) + rows_of("random", [0.31, 0.35])
                             + rows_of("searched-perturbation", [0.50, 0.51])))
    assert "Searched, cell by perturbation, minus random: +17.5 points" in both
    assert "Searched, cell by perturbation beats random by more than the spread: **yes**" in both
    assert "| searched-perturbation | 2 | 50.5 ± 0.7 |" in both


def test_ranking_stability_is_tau_of_each_evaluation_against_the_last():
    sys.path.insert(0, str(REPO))
    from bench.camvid import ranking_stability
    curves = ["2:0.1 4:0.3", "2:0.2 4:0.2", "2:0.3 4:0.1"]  # the order reverses
    table = "\n".join(ranking_stability(rows_of("random", [0.3, 0.2, 0.1], curves)))
    assert "| tau | -1.00 | 1.00 |" in table


def test_missing_dataset_is_one_line_and_nonzero(tmp_path):
    result = bench("--protocol", "smoke", "--data-root", tmp_path / "nowhere", "--out-dir",
                   tmp_path / "out", timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "nowhere" in result.stderr
    assert "--data-root" in result.stderr and not (tmp_path / "out").exists()
