"""oneDNN's primitive cache, sized for the supernet.

On the CPU, PyTorch runs convolutions as oneDNN primitives: a kernel generated (JIT-compiled)
for one shape, kept in a least-recently-used cache that holds 1024 of them by default. A search
step of the supernet (F=8, L=12) uses about 1,250 distinct primitives at crop 64 and 1,400 at
crop 192, in the same order every step, so a cache of 1024 evicts each one just before it is
needed again: every step generated some 1,200 kernels anew, a fifth of a CPU step. With room
for all of them, a step generates none after the first.

oneDNN reads ONEDNN_PRIMITIVE_CACHE_CAPACITY once, when it creates its first primitive, so the
entry scripts call `size_primitive_cache()` before any work. A value the user set is kept.
Results are bit-identical; each cached primitive costs some kilobytes of generated code.
"""
from __future__ import annotations

import os

ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
CAPACITY = 16384  # over 10x the supernet's distinct primitives at the paper's settings


def size_primitive_cache(capacity: int = CAPACITY, env=None) -> str:
    """Set oneDNN's primitive cache capacity in `env` (default os.environ) unless already set;
    returns the capacity in effect, for the log."""
    env = os.environ if env is None else env
    return env.setdefault(ENV, str(capacity))
