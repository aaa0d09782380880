"""The step benchmarks run and report what README quotes (not timed: only that they work)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_bench(script, *argv):
    out = subprocess.run([sys.executable, str(REPO / "bench" / script), "--warmup", "0",
                          "--repeats", "1", *argv], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_search_step_reports_time_memory_and_flops_per_crop():
    rows = run_bench("search_step.py", "--crops", "16", "24", "--filter-multiplier", "2",
                     "--num-layers", "3", "--batch-size", "2")
    assert [r["crop"] for r in rows] == [16, 24]
    for r in rows:
        assert r["weight_step_s"]["min"] > 0 and r["arch_step_s"]["min"] > 0
        assert r["peak_memory_gib"] > 0 and r["matmul_gflops"] > 0
        assert r["forward_backward_gflop"] > r["forward_gflop"] > 0
    assert rows[1]["forward_gflop"] > rows[0]["forward_gflop"]  # more pixels, more work


def test_retrain_step_reports_the_paper_network():
    (row,) = run_bench("retrain_step.py", "--crops", "33", "--batch-size", "2")
    assert row["model"] == "autodeeplab-s" and row["crop"] == 33
    assert abs(row["params_m"] - 10.15) < 0.05  # Auto-DeepLab-S, 19 classes
    assert row["step_s"]["min"] > 0 and row["fraction_of_matmul"] > 0
