"""Process groups and random state on CUDA machines, tested as far as a CPU allows: the group a
CUDA run joins must serve the CPU tensors some collectives use, and each process must get its
own device's random state back on resume."""
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from utils import distributed
from utils.distributed import CUDA_BACKENDS, check_replicas_in_sync, init_distributed
from utils.run import rng_state, set_rng_state


def second_of_two_processes(monkeypatch, gpus: int) -> dict:
    """Rank 1 of 2 under torchrun on a machine with `gpus` GPUs; what it joins is recorded in
    the returned dict (the GPU it selects, the group's backend)."""
    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: joined.setdefault("gpu", index))
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend: joined.setdefault("backend", backend))
    return joined


def test_a_cuda_run_joins_a_group_that_serves_cpu_tensors_too(monkeypatch):
    # NCCL alone has no CPU backend: the replica checksum (a CPU tensor) failed there with "No
    # backend type associated with device type cpu" at the first check of every multi-GPU run.
    joined = second_of_two_processes(monkeypatch, gpus=2)
    info, device = init_distributed(None, None)
    assert (info.rank, info.world_size, device) == (1, 2, torch.device("cuda", 1))
    assert joined["gpu"] == 1
    backends = dict(part.split(":") for part in joined["backend"].split(","))
    assert backends == {"cpu": "gloo", "cuda": "nccl"}


def test_more_processes_than_gpus_is_one_line_unless_a_test_backend_shares_them(monkeypatch):
    from utils.errors import UserError
    joined = second_of_two_processes(monkeypatch, gpus=1)
    with pytest.raises(UserError, match="LOCAL_RANK 1 but this machine shows 1 GPU"):
        init_distributed(None, None)
    assert joined == {}
    monkeypatch.setenv(distributed.BACKEND_ENV, "gloo")  # the GPU check's two processes
    info, device = init_distributed(None, None)
    assert device == torch.device("cuda", 0) and joined == {"gpu": 0, "backend": "gloo"}


def test_a_cpu_run_joins_gloo(monkeypatch):
    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend: joined.setdefault("backend", backend))
    info, device = init_distributed(None, "cpu")
    assert device == torch.device("cpu") and joined["backend"] == "gloo"


def test_replica_check_runs_in_a_group_given_by_device_type():
    # The CPU half of CUDA_BACKENDS, for real: the syntax that names a backend per device type
    # works with the checksum's collective.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cpu_part = next(part for part in CUDA_BACKENDS.split(",") if part.startswith("cpu:"))
    dist.init_process_group(cpu_part, init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    try:
        model = nn.Linear(3, 2)
        expected = sum(p.detach().double().sum().item() for p in model.parameters())
        assert check_replicas_in_sync(model) == pytest.approx(expected)
    finally:
        dist.destroy_process_group()


class FakeCuda:
    """Per-device generator states of a machine with `count` GPUs, `current` in use."""

    def __init__(self, count, current, base=0):
        self.states = [torch.tensor([base + i], dtype=torch.uint8) for i in range(count)]
        self.current = current

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: self.states[self.current])
        monkeypatch.setattr(torch.cuda, "set_rng_state",
                            lambda state: self.states.__setitem__(self.current, state))
        for name in ("get_rng_state_all", "set_rng_state_all"):  # would touch other GPUs
            monkeypatch.setattr(torch.cuda, name, lambda *a: pytest.fail(f"{name} called"))


def test_rng_state_holds_the_process_device_only(monkeypatch):
    # Saved by rank 0 (GPU 0) of a 4-GPU machine and resumed by a rank on GPU 1 of a 2-GPU one:
    # that rank gets the saved device state on its own GPU and no other GPU is touched (the
    # state of every GPU saved as a list failed with fewer GPUs and gave rank 1 the untouched
    # state of GPU 1 in rank 0's process).
    FakeCuda(4, 0, base=100).install(monkeypatch)
    saved = rng_state()
    assert torch.equal(saved["cuda_device"], torch.tensor([100], dtype=torch.uint8))
    resumed = FakeCuda(2, 1)
    resumed.install(monkeypatch)
    set_rng_state(saved)
    assert [int(s) for s in resumed.states] == [0, 100]


def test_rng_state_of_older_checkpoints_restores_the_own_device_or_warns(monkeypatch, caplog):
    saved = rng_state()
    saved["cuda"] = [torch.tensor([7], dtype=torch.uint8), torch.tensor([8], dtype=torch.uint8)]
    resumed = FakeCuda(4, 1, base=20)
    resumed.install(monkeypatch)
    set_rng_state(saved)
    assert [int(s) for s in resumed.states] == [20, 8, 22, 23]  # this process's GPU's entry
    resumed = FakeCuda(4, 3, base=20)
    resumed.install(monkeypatch)
    set_rng_state(saved)
    assert [int(s) for s in resumed.states] == [20, 21, 22, 23]
    assert "CUDA random state" in caplog.text


def test_fp16_resume_from_a_checkpoint_written_without_loss_scaling():
    # A float32 or bf16 run's checkpoint holds the disabled scaler's empty state; resuming it
    # with fp16 on failed in GradScaler.load_state_dict.
    from utils.amp import load_scaler_state
    saved = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    assert saved == {}
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    with pytest.raises(RuntimeError):
        scaler.load_state_dict(saved)
    load_scaler_state(scaler, saved)
    assert scaler.get_scale() == 1024.0
    other = torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0)
    load_scaler_state(scaler, other.state_dict())  # a real state is restored as it was
    assert scaler.get_scale() == 8.0
    load_scaler_state(torch.amp.GradScaler("cpu", enabled=False), other.state_dict())
