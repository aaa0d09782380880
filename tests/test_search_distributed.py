"""train_autodeeplab.py under torchrun (gloo, CPU): sharded halves, replicas in sync, rank 0
writes, a signal to one rank stops all, a resume continues bit-identical."""
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_autodeeplab
from config_utils.search_args import get_args_parser, resolve_defaults
from engine.search_setup import build_data
from modeling.supernet import AutoDeepLabSearch, SupernetConfig
from utils.distributed import DistInfo
from utils.interrupt import Interrupted

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TINY = ["--dataset", "synthetic", "--filter-multiplier", "2", "--num-layers", "3", "--steps",
        "2", "--block-multiplier", "2", "--crop-size", "32", "--batch-size", "2",
        "--workers", "0", "--device", "cpu"]
# Halves of 16: 4 A batches per process and epoch; architecture steps in the second epoch.
RUN = [*TINY, "--epochs", "2", "--alpha-epoch", "1", "--max-samples", "32"]


def torchrun(*argv, signal_rank=None, **popen):
    """Two gloo processes; `signal_rank=(rank, count, signum)` makes that rank send itself
    `signum` after `count` optimizer steps (tests/signal_at_step.py)."""
    script = ["train_autodeeplab.py"]
    if signal_rank is not None:
        rank, count, signum = signal_rank
        script = ["tests/signal_at_step.py", str(count), str(int(signum)), f"rank={rank}",
                  *script]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", *script, *map(str, argv)]
    if popen:
        return subprocess.Popen(command, cwd=REPO, env=ENV, text=True, **popen)
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def metrics_rows(run):
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted two-process search."""
    out = tmp_path_factory.mktemp("ddp") / "search"
    res = torchrun(*RUN, "--out-dir", out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def shards(rank, world_size, *argv):
    args = resolve_defaults(get_args_parser().parse_args([*TINY, *argv]))
    _, split, loader_a, loader_b, _ = build_data(
        args, torch.device("cpu"), DistInfo(rank, world_size))
    return split, loader_a, loader_b


@pytest.mark.parametrize("max_samples", [32, 26])  # halves of 16 and 13 images
def test_shards_of_each_half_are_disjoint_and_cover_it(max_samples):
    ranks = [shards(rank, 2, "--max-samples", str(max_samples), "--no-val") for rank in (0, 1)]
    (split, *_), (other_split, *_) = ranks
    assert torch.equal(split["a"], other_split["a"]) and torch.equal(split["b"], other_split["b"])
    for half, column in (("a", 1), ("b", 2)):
        loaders = [r[column] for r in ranks]
        assert len(loaders[0]) == len(loaders[1])  # the processes step together
        for epoch in range(3):
            seen = []
            for loader in loaders:
                loader.set_epoch(epoch)
                seen.append({loader.dataset.indices[i] for i in loader.sampler})
            whole = set(split[half].tolist())
            assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] <= whole
            # An odd half leaves one image out of each pass (another one every epoch).
            assert len(seen[0] | seen[1]) == len(whole) - len(whole) % 2


@pytest.mark.slow
def test_two_processes_search_in_sync_and_rank_0_writes(reference):
    log = (reference / "search.log").read_text()
    assert "of batch 2 x 2 processes" in log
    # Every rank all-gathers a checksum of its weights, alphas and betas after each epoch and
    # fails on a mismatch.
    assert log.count("weights, alphas and betas identical on all 2 processes") == 2
    assert len(list(reference.glob("events.out.tfevents*"))) == 1  # rank 0 only
    assert [r["epoch"] for r in metrics_rows(reference)] == ["1", "2"]
    state = load(reference / "checkpoint.pth.tar")
    assert state["world_size"] == 2 and state["epoch"] == 2 and state["global_step"] == 8
    torch.manual_seed(0)  # the run's seed: the supernet it started from
    init = AutoDeepLabSearch(SupernetConfig(**state["model_args"])).state_dict()
    for name in ("alphas", "betas"):
        assert not torch.equal(state["model"][name], init[name]), name


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_all_and_resume_is_bit_identical(tmp_path, reference):
    out = tmp_path / "stopped"
    # Rank 1 only, inside the second batch of the second epoch (4 weight steps, a weight and
    # an architecture step, one more): rank 0 must stop too.
    proc = torchrun(*RUN, "--checkpoint-interval", "1", "--out-dir", out,
                    signal_rank=(1, 4 + 2 + 1, signal.SIGTERM),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.wait(timeout=120)
    checkpoint = out / "checkpoint.pth.tar"
    stderr = proc.stderr.read()
    assert proc.returncode != 0 and "SIGTERM received" in stderr, stderr[-3000:]
    stopped = load(checkpoint)
    assert stopped["epoch"] == 1 and stopped["position"]["batch"] == 2
    assert stopped["b_consumed"] == stopped["position"]["batch"]

    res = torchrun("--resume", checkpoint)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed, full = load(checkpoint), load(reference / "checkpoint.pth.tar")
    assert resumed["epoch"] == 2 and resumed["global_step"] == full["global_step"]
    assert resumed["model"].keys() == full["model"].keys()
    for name, value in full["model"].items():  # weights, alphas, betas, rank 0's BN buffers
        assert torch.equal(value, resumed["model"][name]), name
    assert metrics_rows(out) == metrics_rows(reference)
    assert "resumed from" in (out / "search.log").read_text()


@pytest.mark.slow
def test_resume_with_another_process_count_is_one_line(reference, capsys):
    args = get_args_parser().parse_args(["--resume", str(reference / "checkpoint.pth.tar")])
    with pytest.raises(SystemExit) as exit_info:
        train_autodeeplab.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was searched by 2 process(es) but this run has 1" in err


@pytest.mark.parametrize("together, calls", [(True, ["barrier", "destroy"]),
                                             (False, ["destroy"])])
def test_leave_process_group_barriers_only_when_all_processes_end_together(
        monkeypatch, together, calls):
    # The barrier keeps gloo's worker threads from freeing a collective's tensors during
    # interpreter exit (an abort after a complete run); after an error on one process the
    # others may never reach it, so it must not wait there.
    import utils.distributed as distributed
    seen = []
    monkeypatch.setattr(distributed.dist, "barrier", lambda: seen.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group",
                        lambda: seen.append("destroy"))
    distributed.leave_process_group(DistInfo(0, 2), together)
    assert seen == calls
    seen.clear()
    distributed.leave_process_group(DistInfo(), together)  # one process: nothing to leave
    assert seen == []


def _raise(err):
    raise err


@pytest.mark.parametrize("body, raised, calls", [
    (lambda: "done", None, ["barrier", "destroy"]),
    (lambda: _raise(Interrupted(signal.SIGTERM, None)), SystemExit, ["barrier", "destroy"]),
    (lambda: _raise(RuntimeError("one process failed")), RuntimeError, ["destroy"]),
])
def test_run_then_leave_barriers_after_an_end_all_processes_share(monkeypatch, body, raised,
                                                                  calls):
    import utils.distributed as distributed
    seen = []
    monkeypatch.setattr(distributed.dist, "barrier", lambda: seen.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group",
                        lambda: seen.append("destroy"))
    if raised is None:
        assert distributed.run_then_leave(DistInfo(0, 2), "train.py", body) == "done"
    else:
        with pytest.raises(raised):
            distributed.run_then_leave(DistInfo(0, 2), "train.py", body)
    assert seen == calls
