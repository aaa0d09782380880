"""bench/camvid.py, the CamVid evidence protocol, at its smoke size: every stage through the
public command lines, the table and plots, a second run that finds everything done."""
import csv
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
def test_smoke_protocol_writes_table_plots_and_resumes(tmp_path, camvid_root):
    out = tmp_path / "camvid"
    argv = ["--protocol", "smoke", "--num-random", "1", "--data-root", camvid_root,
            "--out-dir", out]
    first = bench(*argv)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["arch"] for r in rows] == ["searched", "paper", "random-1"]
    class_columns = [k for k in rows[0] if k.startswith("iou_")]
    assert len(class_columns) == 11 and "iou_Sky" in class_columns
    for row in rows:
        assert 0.0 <= float(row["miou"]) <= 1.0 and float(row["params_m"]) > 0
        assert float(row["multi_adds_g"]) > 0 and float(row["train_s"]) > 0
    assert rows[1]["network_path"] == "0 0 0 1 2 1 2 2 3 3 2 1"  # the paper's
    # The searched and the random networks share the search's L and cell size.
    assert len(rows[0]["network_path"].split()) == len(rows[2]["network_path"].split()) == 3
    table = (out / "results.md").read_text()
    assert "| searched |" in table and "| random-1 |" in table and "Sky" in table
    for picture in ("search.png", "miou_vs_multiadds.png", "search/architecture.png"):
        assert (out / picture).stat().st_size > 1000, picture

    # Everything is done: the second run trains nothing and writes the same table.
    before = sorted(p.name for p in (out / "retrain").iterdir())
    again = bench(*argv)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "retrain " not in again.stdout and "search:" not in again.stdout
    assert sorted(p.name for p in (out / "retrain").iterdir()) == before
    assert list(csv.DictReader(open(out / "results.csv"))) == rows


def test_missing_dataset_is_one_line_and_nonzero(tmp_path):
    result = bench("--protocol", "smoke", "--data-root", tmp_path / "nowhere", "--out-dir",
                   tmp_path / "out", timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "nowhere" in result.stderr
    assert "--data-root" in result.stderr and not (tmp_path / "out").exists()
