"""--amp: torch.autocast on CUDA only, a GradScaler for fp16 only."""
from contextlib import nullcontext

import pytest
import torch

from utils.amp import amp_context


def test_cpu_ignores_amp_with_a_warning():
    with pytest.warns(UserWarning, match="--amp needs CUDA"):
        autocast, scaler = amp_context(True, "bf16", torch.device("cpu"))
    assert autocast is nullcontext and not scaler.is_enabled()
    autocast, scaler = amp_context(False, "fp16", torch.device("cpu"))
    assert autocast is nullcontext and not scaler.is_enabled()


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
@pytest.mark.parametrize("name, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cuda_gets_autocast_of_the_dtype(name, dtype):
    # Built, not entered: the factory and its arguments are what a CUDA run uses.
    autocast, _ = amp_context(True, name, torch.device("cuda"))
    assert autocast.func is torch.autocast
    assert autocast.keywords == {"device_type": "cuda", "dtype": dtype, "cache_enabled": True}
    # Steps captured as CUDA graphs (--cuda-graphs) must not cache cast weights.
    autocast, _ = amp_context(True, name, torch.device("cuda"), cache=False)
    assert autocast.keywords["cache_enabled"] is False
    _, scaler = amp_context(False, name, torch.device("cuda"))
    assert not scaler.is_enabled()
