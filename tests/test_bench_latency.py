"""bench/latency.py: every network beside S, in one run, with ratios that follow from the times."""
import json

import pytest
import torch

from bench import latency
from engine.genotype_io import load_genotype


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_latency_rows_and_ratios(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "latency.jsonl"
    rows = latency.main(latency.get_args_parser().parse_args(
        ["--genotypes", "planted-context", "--filter-multiplier", "2", "--num-classes", "3",
         "--sizes", "32x48", "--devices", "cpu", "--threads", "1", "--warmup", "0",
         "--repeats", "2", "--onnx", "--out", str(out)]))
    assert [(r["network"], r["runtime"]) for r in rows] == [
        ("autodeeplab-s", "eager"), ("autodeeplab-s", "onnxruntime"),
        ("planted-context (F=2)", "eager"), ("planted-context (F=2)", "onnxruntime")]
    s_eager, s_onnx, mine, mine_onnx = rows
    assert s_eager["vs_S"] == 1.0 and s_eager["vs_eager_fp32"] == 1.0
    assert mine["vs_S"] == pytest.approx(mine["ms_mean"] / s_eager["ms_mean"], abs=1e-3)
    assert mine_onnx["vs_eager_fp32"] == pytest.approx(
        mine_onnx["ms_mean"] / mine["ms_mean"], abs=1e-3)
    assert round(s_eager["params_m"]) == 10 and s_eager["device"] == "CPU, 1 threads"
    for row in rows:
        assert row["passes"] == 2 and row["size"] == "32x48" and row["batch"] == 1
        assert row["images_per_s"] == pytest.approx(1e3 / row["ms_mean"])
        assert row["ms_p90"] >= row["ms_mean"] * 0.5
    # The searched network is the shipped genotype's, at the asked F.
    assert len(load_genotype("planted-context").network_path) == 8
    assert [json.loads(line)["network"] for line in out.read_text().splitlines()] == \
        [r["network"] for r in rows]
    assert "| planted-context (F=2) | 32x48 | CPU, 1 threads | fp32 | eager |" in \
        capsys.readouterr().out


def test_a_bad_size_is_one_line():
    with pytest.raises(SystemExit, match="--sizes takes HxW, e.g. 512x1024; got '32'"):
        latency.main(latency.get_args_parser().parse_args(["--sizes", "32"]))
