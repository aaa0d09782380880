"""Mixed precision with torch.amp, for the search and the retraining alike.

Autocast runs on CUDA only: on the CPU the flag is ignored with a warning (CPU bf16 autocast
is slower than float32 on most CPUs and changes results)."""
from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext
from functools import partial

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


AMP_DTYPE_CHOICES = ("auto", *AMP_DTYPES)


def resolve_amp_dtype(dtype_name: str, device: torch.device) -> str:
    """`auto`: bf16 where the GPU computes it natively (Ampere and later), else fp16 with loss
    scaling (T4, V100 and older: their bf16 is emulated and slow)."""
    if dtype_name != "auto":
        return dtype_name
    native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16" if native_bf16 else "fp16"


def amp_context(enabled: bool, dtype_name: str, device: torch.device, cache: bool = True):
    """(autocast factory, GradScaler) for `--amp`: a `torch.autocast` of `dtype_name` (or the
    one `resolve_amp_dtype` picks for `auto`) on CUDA, else `nullcontext`; the scaler is enabled
    for fp16 on CUDA only (bf16 needs none). A disabled scaler passes everything through.
    `cache`: autocast's cache of cast weights within one autocast region (off for steps
    captured as CUDA graphs, as PyTorch requires)."""
    active = enabled and device.type == "cuda"
    if enabled and not active:
        warnings.warn("--amp needs CUDA; running in float32 on the CPU", stacklevel=2)
    dtype = AMP_DTYPES[resolve_amp_dtype(dtype_name, device)]
    autocast = partial(torch.autocast, device_type=device.type, dtype=dtype,
                       cache_enabled=cache) if active else nullcontext
    scaler = torch.amp.GradScaler("cuda", enabled=active and dtype == torch.float16)
    return autocast, scaler


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Restore a GradScaler from a checkpoint. A checkpoint written without fp16 scaling (on the
    CPU, in float32 or bf16) holds an empty state, which `load_state_dict` refuses on an enabled
    scaler: the scaler then starts from its initial scale, as a new run's does."""
    if scaler.is_enabled() and not state:
        logging.getLogger(__name__).info(
            "the checkpoint was written without fp16 loss scaling: the loss scale starts at "
            "its initial value")
        return
    scaler.load_state_dict(state)

