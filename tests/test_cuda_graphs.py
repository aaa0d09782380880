"""--cuda-graphs (engine/cuda_graphs.py): what the CPU can check of a capturable search step,
the refusals, and, on a GPU (AUTODEEPLAB_TEST_DEVICE=cuda), graphed steps against eager ones."""
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.cuda_graphs import (GraphedStep, check_cuda_graphs, portable_optimizer_state,
                                prepare_optimizers)
from engine.search import Architect, weight_step, weight_step_tensors
from modeling.supernet import AutoDeepLabSearch, SupernetConfig
from utils.errors import UserError
from utils.lr_scheduler import cosine_schedule

REPO = Path(__file__).resolve().parents[1]
# Operators that read a tensor's value on the host (a CUDA graph cannot capture them), or
# whose output shape depends on values.
HOST_READS = {"_local_scalar_dense", "nonzero", "equal", "is_nonzero", "item"}


class HostReads(TorchDispatchMode):
    """Records the operators of HOST_READS dispatched while active and not `paused`."""

    def __init__(self):
        super().__init__()
        self.seen, self.paused = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused and func.__name__.split(".")[0] in HOST_READS:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))

    @contextmanager
    def pause(self):
        self.paused = True
        try:
            yield
        finally:
            self.paused = False


def tiny_setup(device="cpu"):
    torch.manual_seed(0)
    model = AutoDeepLabSearch(SupernetConfig(num_classes=3, num_layers=3, filter_multiplier=2,
                                             block_multiplier=2, steps=2)).to(device)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=0.05, momentum=0.9,
                                weight_decay=3e-4, fused=True)
    architect = Architect(model, criterion, 3e-3, 1e-3)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 3, 32, 32, generator=generator).to(device),
                torch.randint(0, 3, (2, 32, 32), generator=generator).to(device))
               for _ in range(8)]
    return model, criterion, optimizer, architect, batches


def test_capturable_steps_read_nothing_back_on_the_host():
    model, criterion, optimizer, architect, batches = tiny_setup()
    # The weights' learning rate as a tensor, as --cuda-graphs sets it (capturable Adam runs
    # on GPUs only: its own contract, torch refuses to capture a non-capturable one, so its
    # step is left out of the record below).
    prepare_optimizers(optimizer, torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]),
                       torch.device("cpu"))
    adam_step = architect.optimizer.step
    images, targets = batches[0]
    with HostReads() as reads:
        architect.optimizer.step = lambda: _paused(reads, adam_step)
        weight_step_tensors(model, criterion, optimizer, model.weight_parameters(), images,
                            targets, grad_clip=5.0)
        architect.step_tensors(images, targets)
    assert reads.seen == []
    # The detector sees what the eager steps read back: the loss, and its finiteness.
    with HostReads() as reads:
        weight_step(model, criterion, optimizer, model.weight_parameters(), images, targets,
                    grad_clip=5.0)
    assert reads.seen.count("_local_scalar_dense.default") >= 2


def _paused(reads, step):
    with reads.pause():
        return step()


def test_tensor_learning_rate_steps_equal_float_ones_bit_for_bit():
    # --cuda-graphs keeps the weights' learning rate in a tensor that the cosine schedule
    # fills in place: the same updates as the float one, step for step.
    results = []
    for graphed in (False, True):
        model, criterion, optimizer, architect, batches = tiny_setup()
        scheduler = cosine_schedule(optimizer, len(batches), 1e-3)
        if graphed:
            prepare_optimizers(optimizer, architect.optimizer, torch.device("cpu"))
            lr = optimizer.param_groups[0]["lr"]
        for images, targets in batches:
            weight_step_tensors(model, criterion, optimizer, model.weight_parameters(),
                                images, targets, grad_clip=5.0)
            scheduler.step()
        if graphed:
            assert optimizer.param_groups[0]["lr"] is lr  # filled, not replaced
        results.append([p.detach().clone() for p in model.weight_parameters()])
    for eager, graphed in zip(*results):
        assert torch.equal(eager, graphed)


def test_checkpoint_of_a_graphed_run_resumes_eagerly():
    model, criterion, optimizer, architect, batches = tiny_setup()
    architect.step(*batches[0])  # Adam's state exists, its step count on the CPU
    prepare_optimizers(optimizer, architect.optimizer, torch.device("cpu"))
    assert architect.optimizer.param_groups[0]["capturable"]
    assert torch.is_tensor(optimizer.param_groups[0]["lr"])
    weights_state = portable_optimizer_state(optimizer.state_dict())
    arch_state = portable_optimizer_state(architect.optimizer.state_dict())
    assert type(weights_state["param_groups"][0]["lr"]) is float
    assert arch_state["param_groups"][0]["capturable"] is False
    assert all(s["step"].device.type == "cpu" for s in arch_state["state"].values())
    # An eager run (the CPU's) loads both and steps on: Adam would refuse a capturable state.
    _, _, fresh_sgd, fresh_architect, _ = tiny_setup()
    fresh_sgd.load_state_dict(weights_state)
    fresh_architect.optimizer.load_state_dict(arch_state)
    fresh_architect.step(*batches[1])
    assert fresh_architect.optimizer.state_dict()["state"][0]["step"].item() == 2


def graph_args(**changes):
    args = dict(cuda_graphs=True, amp=False, amp_dtype="bf16", checkpoint_cells=False,
                beta_decay=0.0, detect_anomaly=False)
    return SimpleNamespace(**{**args, **changes})


@pytest.mark.parametrize("changes, distributed, message", [
    ({"amp": True, "amp_dtype": "fp16"}, False, "--amp with fp16"),
    ({"checkpoint_cells": True}, False, "--checkpoint-cells"),
    ({"beta_decay": 1.0}, False, "--beta-decay"),
    ({"detect_anomaly": True}, False, "--detect-anomaly"),
    ({}, True, "a run under torchrun"),
])
def test_what_cuda_graphs_cannot_capture_is_refused_in_one_line(changes, distributed, message):
    with pytest.raises(UserError) as err:
        check_cuda_graphs(graph_args(**changes), torch.device("cuda"), distributed)
    assert str(err.value).startswith(f"--cuda-graphs cannot capture {message}")
    assert "\n" not in str(err.value)


def test_capturable_settings_pass_and_off_is_never_checked():
    check_cuda_graphs(graph_args(amp=True, amp_dtype="bf16"), torch.device("cuda"), False)
    check_cuda_graphs(graph_args(cuda_graphs=False, checkpoint_cells=True),
                      torch.device("cpu"), True)


def test_cuda_graphs_on_the_cpu_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "train_autodeeplab.py", "--dataset", "synthetic",
                           "--device", "cpu", "--cuda-graphs", "--out-dir", str(tmp_path / "r")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --cuda-graphs needs a CUDA device but this run is on cpu: drop --cuda-graphs "
        "(or pass --device cuda)")
    assert not (tmp_path / "r").exists()


def test_graphed_search_steps_equal_eager_ones(device):
    """Eager steps against the same steps through GraphedStep: 3 eager warm-up steps, the
    capture and 4 replays, on the same batches from the same start."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU (AUTODEEPLAB_TEST_DEVICE=cuda)")
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # the same kernels in both runs
    try:
        runs = []
        for graphed in (False, True):
            model, criterion, optimizer, architect, batches = tiny_setup(device)
            scheduler = cosine_schedule(optimizer, len(batches), 1e-3)
            weights = model.weight_parameters()
            prepare_optimizers(optimizer, architect.optimizer, device)
            w_step = lambda x, y: weight_step_tensors(  # noqa: E731
                model, criterion, optimizer, weights, x, y, grad_clip=5.0)
            a_step = architect.step_tensors
            if graphed:
                pool = torch.cuda.graph_pool_handle()
                w_step = GraphedStep(w_step, "weight", pool=pool)
                a_step = GraphedStep(a_step, "architecture", pool=pool)
            losses = []
            for images, targets in batches:
                losses.append(w_step(images, targets).item())
                scheduler.step()
                losses.append(architect.record(*a_step(images, targets)))
            if graphed:
                assert w_step.graph is not None and a_step.graph is not None
            runs.append((losses, [p.detach().clone() for p in model.parameters()],
                         [b.clone() for b in model.buffers()]))
    finally:
        torch.backends.cudnn.benchmark = benchmark
    (eager_losses, eager_params, eager_buffers), (losses, params, buffers) = runs
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(eager_params + eager_buffers, params + buffers):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_cuda_graphs_is_asked_for_anew_on_every_resume():
    # A graphed run's checkpoint resumes on a CPU without a flag to unset, and any run can
    # be resumed graphed: the flag belongs to the invocation, not to the checkpoint.
    from config_utils.common import merge_resume_args
    from config_utils.search_args import (ARCH_KEYS, CURRENT_KEYS, RESUME_SAFE_KEYS,
                                          get_args_parser)
    for saved, given in ((True, []), (False, ["--cuda-graphs"])):
        args = get_args_parser().parse_args(["--resume", "ckpt", *given])
        merged = merge_resume_args(args, {**vars(args), "cuda_graphs": saved},
                                   {"resume", *(["cuda_graphs"] if given else [])},
                                   fixed_keys=ARCH_KEYS, safe_keys=RESUME_SAFE_KEYS,
                                   current_keys=CURRENT_KEYS)
        assert merged.cuda_graphs is (not saved)
