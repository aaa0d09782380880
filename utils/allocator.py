"""A faster memory allocator for the CPU side: tcmalloc (or jemalloc) when the system has it.

A search step is tens of thousands of tensor allocations of very different sizes. glibc's
malloc serves them slowly and, as its mmap threshold adapts, its heap grows step after step;
tcmalloc makes a CPU search step 1.2-1.5x faster and its peak memory lower (docs/performance.md). The library cannot be switched in a running process, so an entry
script calls `preload_fast_allocator()` under `__main__`: if tcmalloc or jemalloc is installed
(`apt install libtcmalloc-minimal4` or `libjemalloc2`) and not loaded yet, the process
re-executes itself once, same PID and arguments, with it in LD_PRELOAD. Set
AUTODEEPLAB_MALLOC=system to keep glibc's. Results are bit-identical either way.

On a GPU run it does the same and matters little: GPU memory comes from PyTorch's caching
allocator, not malloc, so only the host side (data loading, the CPU side of each operator
call) uses the preloaded library. It is kept there because it costs one exec before torch is
imported, and the device is not known until the arguments are parsed.
"""
from __future__ import annotations

import os
import sys

ENV = "AUTODEEPLAB_MALLOC"
LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libjemalloc.so.2")
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
               "/usr/lib", "/usr/local/lib")


def find_fast_allocator(search_dirs=SEARCH_DIRS) -> str | None:
    """Path of the first installed library of `LIBRARIES`, or None."""
    for name in LIBRARIES:
        for folder in search_dirs:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def _preloaded(env) -> str | None:
    """The library of `LIBRARIES` that `env`'s LD_PRELOAD names, without lib and .so."""
    preload = env.get("LD_PRELOAD", "")
    for name in LIBRARIES:
        stem = name.split(".so")[0]
        if stem in preload:
            return stem[3:]
    return None


def allocator_in_use() -> str:
    """For the log: which allocator this process runs with."""
    library = _preloaded(os.environ)
    return f"{library} (LD_PRELOAD)" if library else "system malloc"


def fast_allocator_env(env=None, search_dirs=SEARCH_DIRS) -> dict | None:
    """`env` (default os.environ) with the fast allocator preloaded; None where nothing
    changes (not Linux, opted out, already preloaded, or none installed)."""
    env = dict(os.environ if env is None else env)
    if not sys.platform.startswith("linux") or env.get(ENV, "").lower() == "system":
        return None
    if _preloaded(env):
        return None
    library = find_fast_allocator(search_dirs)
    if library is None:
        return None
    current = env.get("LD_PRELOAD")
    env["LD_PRELOAD"] = library + (f":{current}" if current else "")
    return env


def preload_fast_allocator() -> None:
    """Re-execute this process with the fast allocator preloaded, where `fast_allocator_env`
    finds one; otherwise return and run as is."""
    env = fast_allocator_env()
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
