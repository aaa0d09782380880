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
        for calls in r["operator_calls"].values():
            assert calls["all_events"] >= calls["top_level"] > calls["non_view"] > calls["to"]
    assert rows[1]["forward_gflop"] > rows[0]["forward_gflop"]  # more pixels, more work


def test_search_step_counts_the_calls_of_the_cpus_and_other_devices_fast_paths():
    # Other devices skip the oneDNN workarounds (regrouping copies around the atrous
    # convolutions, depthwise weight gradients in column slices) and the copy after small
    # matmuls: fewer calls for the same step.
    calls = {}
    for paths in ("cpu", "other"):
        row, = run_bench("search_step.py", "--crops", "16", "--filter-multiplier", "2",
                         "--num-layers", "3", "--batch-size", "2", "--fast-paths", paths)
        assert row["fast_paths"] == paths
        calls[paths] = row["operator_calls"]
    for step in ("weight_step", "arch_step"):
        assert calls["other"][step]["top_level"] < calls["cpu"][step]["top_level"]


def test_operator_counts_take_a_copying_reshape_for_a_kernel():
    sys.path.insert(0, str(REPO))
    import torch
    from bench.step_timing import count_operator_calls
    x = torch.randn(4, 6)
    views = count_operator_calls(lambda: x.reshape(24).view(6, 4).t())
    assert views == {"top_level": 3, "non_view": 0, "copying_views": 0, "to": 0,
                     "all_events": views["all_events"]}
    copies = count_operator_calls(lambda: (x.t().reshape(24), x.t().contiguous(), x + 1))
    assert copies["top_level"] == 5 and copies["copying_views"] == 2  # reshape, contiguous
    assert copies["non_view"] == 3  # those two and the add; not the two transposes


def test_retrain_step_reports_the_paper_network():
    (row,) = run_bench("retrain_step.py", "--crops", "33", "--batch-size", "2")
    assert row["model"] == "autodeeplab-s" and row["crop"] == 33
    assert abs(row["params_m"] - 10.15) < 0.05  # Auto-DeepLab-S, 19 classes
    assert row["step_s"]["min"] > 0 and row["fraction_of_matmul"] > 0


def test_search_ab_alternates_a_revision_and_the_working_tree():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "search_ab.py"), "--against",
                          "HEAD", "--crops", "16", "--pairs", "2", "--filter-multiplier", "2",
                          "--num-layers", "3"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert row["crop"] == 16 and row["against"] == "HEAD"
    for kind in ("weight", "arch"):
        assert all(v > 0 for v in row[f"{kind}_step_s"].values())
        assert set(row[f"{kind}_B_over_A"]) == {"median", "cpu_time", "min"}


def test_search_ab_switch_lends_the_revisions_methods_and_gives_them_back():
    sys.path.insert(0, str(REPO))
    from bench import search_ab
    import modeling.search_cell as current
    old = search_ab.load_revision("HEAD")
    switch = search_ab.Switch(old)
    mine = current.SharedSourceOps.forward
    switch.use("A")
    assert current.SharedSourceOps.forward is vars(old.SharedSourceOps)["forward"]
    assert current.SharedSourceOps.forward.__module__ == "search_cell_a"
    switch.use("B")
    assert current.SharedSourceOps.forward is mine


def test_search_ab_names_an_unknown_revision():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "search_ab.py"), "--against",
                          "no-such-revision"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith(
        "error: cannot read modeling/search_cell.py at --against no-such-revision")


def test_revisions_ab_steps_a_revisions_network_and_the_working_trees():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "revisions_ab.py"), "search",
                          "--against", "HEAD", "--crops", "16", "--pairs", "1",
                          "--filter-multiplier", "2", "--num-layers", "3"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert row["crop"] == 16 and row["step"] == "search"
    # Both sides built the benchmark's network (F = 2, L = 3), each from its own code.
    assert row["params_m"]["A"] == row["params_m"]["B"] > 0
    for kind in ("weight", "arch"):
        assert all(v > 0 for v in row[f"{kind}_step_s"].values())
        assert set(row[f"{kind}_B_over_A"]) == {"median", "cpu_time", "min"}


def test_revisions_ab_names_an_unknown_revision():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "revisions_ab.py"), "retrain",
                          "--against", "no-such-revision"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "error: --against no-such-revision: not a revision of this repository")


def test_arch_gradient_noise_reports_the_ratio_per_batch_size():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "arch_gradient_noise.py"),
                          "--batch-sizes", "2", "3", "--batches", "3", "--crop-size", "32",
                          "--filter-multiplier", "2", "--num-layers", "3"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["batch"] for r in rows] == [2, 3]
    for r in rows:
        for name in ("alphas", "betas"):
            assert r[name]["grad_snr"] > 0 and r[name]["grad_norm"] >= r[name]["mean_grad_norm"]
