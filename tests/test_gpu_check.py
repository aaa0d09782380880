"""bench/gpu_check.py rehearsed on the CPU at toy sizes: every check runs, passes and is
reported, so that the one call on a GPU machine spends its time on the GPU's answers."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_rehearsal_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--tiny",
                           "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = {k: v for k, v in results.items() if not v["ok"]}
    assert done.returncode == 0 and not failed, json.dumps(failed, indent=1)[-4000:]
    assert list(results) == ["environment", "device tests", "parity", "end to end", "ddp",
                             "search step", "retrain step", "latency"]
    assert results["parity"]["fp32"] == {**results["parity"]["cpu fp32"],
                                         "limit": results["parity"]["fp32"]["limit"]}
    assert results["search step"]["bf16"]["amp"] == "bf16"
    assert results["end to end"]["resumed to"] == 4
    assert results["ddp"]["replicas_in_sync"] and results["ddp"]["images_per_process"] == 1
    assert results["retrain step"]["fp32"]["memory_format"] == "channels_last"
    assert any("| autodeeplab-s | 32x48 | CPU" in row for row in results["latency"]["table"])
    assert "| ddp | ok |" in (tmp_path / "gpu_check.md").read_text()


def test_unknown_check_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--only",
                           "parityy", "--out-dir", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stderr.strip().count("\n") == 0
    assert "parityy" in done.stderr and "parity" in done.stderr.split("are:")[1]
