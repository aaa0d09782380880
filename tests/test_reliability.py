"""Issue 6: a killed run resumes with nothing lost, checkpoints are never corrupted, bad input
gets one clear line. Both entry scripts, mostly on tiny settings; the kill tests use real
subprocesses."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
import train_autodeeplab
from config_utils import search_args, train_args
from modeling.genotypes import GENOTYPES, Genotype

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
SEARCH_TINY = ["--dataset", "synthetic", "--filter-multiplier", "2", "--num-layers", "3",
               "--steps", "2", "--block-multiplier", "2", "--crop-size", "32",
               "--batch-size", "2", "--workers", "0", "--no-val"]
# 8 A batches per epoch; the architecture steps start in the second epoch.
SEARCH_RUN = [*SEARCH_TINY, "--epochs", "2", "--alpha-epoch", "1", "--max-samples", "32"]
RETRAIN_TINY = ["--dataset", "synthetic", "--filter-multiplier", "2", "--crop-size", "32",
                "--batch-size", "2", "--workers", "0", "--warmup-iters", "1"]
# 6 batches per epoch; drop path makes the run draw random numbers every step.
RETRAIN_RUN = [*RETRAIN_TINY, "--max-samples", "12", "--iters", "14", "--eval-interval", "7",
               "--no-val", "--drop-path-keep-prob", "0.8"]


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs compute with one thread, like the OMP_NUM_THREADS=1 subprocesses, so
    that their results can be compared bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def search(*argv):
    return train_autodeeplab.main(search_args.get_args_parser().parse_args(list(map(str, argv))))


def retrain(*argv):
    return train.main(train_args.get_args_parser().parse_args(list(map(str, argv))))


def spawn(script, *argv):
    return subprocess.Popen([sys.executable, script, *map(str, argv)], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def cli(script, *argv, timeout=180):
    return subprocess.run([sys.executable, script, *map(str, argv)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def wait_for_checkpoint(proc, path, ready, timeout=120):
    """Poll `path` until `ready(state)`; the checkpoint is replaced atomically, so every read
    sees a whole file."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before the checkpoint "
                        f"wanted appeared: {proc.stderr.read()[-2000:]}")
        if path.exists():
            try:
                if ready(load(path)):
                    return
            except (RuntimeError, EOFError):
                pass  # replaced while being read on a slow file system: try again
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint in time")


def metrics_rows(run, drop):
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != drop} for row in csv.DictReader(f)]


def assert_same_model(a, b):
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


@pytest.fixture(scope="module")
def search_reference(tmp_path_factory):
    """An uninterrupted search, the one every interrupted search must reproduce."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = search(*SEARCH_RUN, "--out-dir", tmp_path_factory.mktemp("ref") / "search")
    torch.set_num_threads(threads)
    return dict(load(out / "checkpoint.pth.tar"), out=out)


def mid_second_epoch(state):
    """A checkpoint inside the second epoch, where A and B both advance."""
    position = state.get("position")
    return state["epoch"] == 1 and position is not None and 1 <= position["batch"] <= 5


# ---------------------------------------------------------------- interruption and resume


@pytest.mark.slow
def test_search_killed_mid_epoch_resumes_bit_identical(tmp_path, search_reference):
    out = tmp_path / "killed"
    proc = spawn("train_autodeeplab.py", *SEARCH_RUN, "--checkpoint-interval", "1",
                 "--out-dir", out)
    wait_for_checkpoint(proc, out / "checkpoint.pth.tar", mid_second_epoch)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed = load(out / "checkpoint.pth.tar")
    assert killed["position"] is not None and killed["epoch"] == 1  # killed mid-epoch
    assert killed["b_consumed"] == killed["position"]["batch"]
    search("--resume", out / "checkpoint.pth.tar")
    resumed = load(out / "checkpoint.pth.tar")
    assert resumed["epoch"] == 2 and resumed["position"] is None
    assert resumed["global_step"] == search_reference["global_step"] == 16
    assert_same_model(search_reference["model"], resumed["model"])  # alphas, betas, BN too
    assert torch.equal(resumed["model"]["alphas"], search_reference["model"]["alphas"])
    # Epoch means are carried through the checkpoint: the report matches as well.
    assert metrics_rows(out, drop="seconds") == metrics_rows(search_reference["out"],
                                                             drop="seconds")
    log = (out / "search.log").read_text()
    assert log.count("search done") == 1 and "resumed from" in log


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_search_signal_writes_checkpoint_and_exits(tmp_path, search_reference, signum, code):
    out = tmp_path / "signalled"
    # No periodic checkpoints: the only mid-epoch one is the signal's.
    proc = spawn("train_autodeeplab.py", *SEARCH_RUN, "--checkpoint-interval", "0",
                 "--out-dir", out)
    wait_for_checkpoint(proc, out / "checkpoint.pth.tar", lambda s: s["epoch"] == 1)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == code, proc.stderr.read()[-2000:]
    stopped = load(out / "checkpoint.pth.tar")
    assert stopped["epoch"] == 1 and stopped["position"] is not None
    assert 0 < stopped["position"]["batch"] <= 8
    assert "--resume" in proc.stderr.read()
    search("--resume", out / "checkpoint.pth.tar")
    assert_same_model(search_reference["model"], load(out / "checkpoint.pth.tar")["model"])


@pytest.fixture
def genotype_file(tmp_path):
    path = tmp_path / "genotype.json"
    Genotype((0, 1, 1), GENOTYPES["autodeeplab"].cell).save(path)
    return path


@pytest.mark.slow
def test_retrain_killed_mid_interval_resumes_bit_identical(tmp_path, genotype_file):
    full = retrain(*RETRAIN_RUN, "--genotype", genotype_file, "--out-dir", tmp_path / "full")
    reference = load(full / "checkpoint.pth.tar")
    out = tmp_path / "killed"
    proc = spawn("train.py", *RETRAIN_RUN, "--genotype", genotype_file,
                 "--checkpoint-interval", "1", "--out-dir", out)
    # Inside the second interval and the second epoch (steps 7..13, epochs of 6 steps).
    wait_for_checkpoint(proc, out / "checkpoint.pth.tar",
                        lambda s: s["position"] is not None and 8 <= s["step"] <= 11)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed = load(out / "checkpoint.pth.tar")
    assert killed["position"] is not None and 8 <= killed["step"] < 14
    retrain("--resume", out / "checkpoint.pth.tar")
    resumed = load(out / "checkpoint.pth.tar")
    assert resumed["step"] == reference["step"] == 14
    assert_same_model(reference["model"], resumed["model"])
    assert resumed["optimizer"]["state"][0]["momentum_buffer"].equal(
        reference["optimizer"]["state"][0]["momentum_buffer"])
    # The interval's mean loss survives the kill too (all columns but the wall time).
    assert metrics_rows(out, drop="seconds") == metrics_rows(full, drop="seconds")
