"""Shared fixtures: where the real CamVid lives, and whether its absence is a failure; the
device the numerical tests run on."""

import os
from pathlib import Path

import pytest

# The numerical tests (those taking the `device` fixture, marked `device`) run on this device:
# AUTODEEPLAB_TEST_DEVICE=cuda runs them on the GPU (make test-gpu). Everything else, and every
# test on a CPU run, sees no GPU, so that a test of a command line without --device means the
# same on a GPU machine as on ours, and the tests that promise bit-identical results, which
# hold on the CPU, are not run elsewhere.
TEST_DEVICE = os.environ.get("AUTODEEPLAB_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch first looks for a GPU

import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    cpu_only = pytest.mark.skip(reason=f"not a device test: runs in the CPU pass, not on "
                                       f"{TEST_DEVICE}")
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
        elif TEST_DEVICE != "cpu":
            item.add_marker(cpu_only)


@pytest.fixture
def device() -> torch.device:
    """AUTODEEPLAB_TEST_DEVICE (cpu by default). On CUDA, TF32 is off: the tests compare with
    float64 or float32 references at float32 tolerances."""
    chosen = torch.device(TEST_DEVICE)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            pytest.fail(f"AUTODEEPLAB_TEST_DEVICE={TEST_DEVICE} but torch sees no GPU")
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield chosen
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        return
    yield chosen

# The shared data sits next to the repository, never inside it.
CAMVID_ROOT = Path(__file__).resolve().parents[1].parent / "shared/datasets/camvid"


@pytest.fixture
def camvid_root() -> Path:
    """The CamVid folder; skip when absent, fail instead when AUTODEEPLAB_REQUIRE_DATA=1."""
    if not CAMVID_ROOT.is_dir():
        reason = f"CamVid not found at {CAMVID_ROOT}"
        if os.environ.get("AUTODEEPLAB_REQUIRE_DATA") == "1":
            pytest.fail(f"{reason} and AUTODEEPLAB_REQUIRE_DATA=1")
        pytest.skip(reason)
    return CAMVID_ROOT
