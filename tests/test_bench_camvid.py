"""bench/camvid.py, the CamVid evidence protocol, at its smoke size: every stage through the
public command lines, the table and plots, a second run that finds everything done."""
import csv
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
    argv = ["--protocol", "smoke", "--num-random", "2", "--search-seeds", "0", "1",
            "--data-root", camvid_root, "--out-dir", out, "--results-dir", results]
    first = bench(*argv)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    rows = list(csv.DictReader(open(results / "results.csv")))
    # The stages that need no search come first.
    assert [r["arch"] for r in rows] == ["paper", "random-1", "random-2", "searched-s0",
                                         "searched-s1"]
    assert [r["group"] for r in rows] == ["paper", "random", "random", "searched", "searched"]
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
    assert [s["search_seed"] for s in searches] == ["0", "1"]
    assert [s["network_path"] for s in searches] == [r["network_path"] for r in rows[3:]]
    for name in ("paper", "random-1", "random-2", "searched-s0", "searched-s1"):
        assert (results / "genotypes" / f"{name}.json").exists(), name
    table = (results / "results.md").read_text()
    assert "| random-2 |" in table and "Sky" in table
    assert "Searched beats random by more than the spread: **" in table
    for picture in ("curves.png", "miou_vs_multiadds.png", "search.png",
                    "genotypes/searched-s0.png"):
        assert (results / picture).stat().st_size > 1000, picture

    # On another machine, with the recorded rows only: nothing is trained again.
    shutil.rmtree(out)
    again = bench(*argv)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "retrain " not in again.stdout and "search " not in again.stdout
    assert list(csv.DictReader(open(results / "results.csv"))) == rows

    # One more random architecture: only it is trained, and random-1 and -2 are unchanged.
    genotypes = [(results / "genotypes" / f"random-{i}.json").read_text() for i in (1, 2)]
    more = bench(*argv[:3], "3", *argv[4:])
    assert more.returncode == 0, more.stderr[-2000:]
    assert more.stdout.count("retrain ") == 1 and "retrain random-3 seed 0" in more.stdout
    assert [(results / "genotypes" / f"random-{i}.json").read_text()
            for i in (1, 2)] == genotypes
    assert len(list(csv.DictReader(open(results / "results.csv")))) == 6


def test_kendall_tau_counts_agreeing_pairs():
    sys.path.insert(0, str(REPO))
    from bench.camvid import kendall_tau
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == -1.0
    assert kendall_tau([1, 2, 3], [20, 10, 30]) == pytest.approx(1 / 3)


def test_missing_dataset_is_one_line_and_nonzero(tmp_path):
    result = bench("--protocol", "smoke", "--data-root", tmp_path / "nowhere", "--out-dir",
                   tmp_path / "out", timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "nowhere" in result.stderr
    assert "--data-root" in result.stderr and not (tmp_path / "out").exists()
