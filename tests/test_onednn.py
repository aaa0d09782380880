"""utils/onednn.py: the primitive cache is sized in time, and then a step generates no kernels."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.onednn import CAPACITY, ENV, size_primitive_cache

REPO = Path(__file__).resolve().parents[1]

# Two weight steps of a small supernet; the second under oneDNN's verbose mode, which prints a
# line per primitive created, saying whether the cache had it. Sized after torch is imported,
# as the entry scripts do it.
STEPS = """
import sys, torch
from utils.onednn import size_primitive_cache
size_primitive_cache(int(sys.argv[1]))
from modeling.supernet import AutoDeepLabSearch, SupernetConfig
torch.manual_seed(0)
model = AutoDeepLabSearch(SupernetConfig(num_classes=3, num_layers=3, filter_multiplier=4,
                                         block_multiplier=3, steps=3)).train()
x = torch.randn(2, 3, 32, 32)
model(x).mean().backward()
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON_CREATION):
    model(x).mean().backward()
"""


def test_a_users_value_is_kept():
    env = {}
    assert size_primitive_cache(env=env) == str(CAPACITY) and env == {ENV: str(CAPACITY)}
    env = {ENV: "50"}
    assert size_primitive_cache(env=env) == "50" and env == {ENV: "50"}


def primitives_created(capacity: int) -> tuple[int, int]:
    env = {key: value for key, value in os.environ.items() if key != ENV}
    out = subprocess.run([sys.executable, "-c", STEPS, str(capacity)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    return (sum("create:cache_miss" in line for line in lines),
            sum("create:cache_hit" in line for line in lines))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_a_large_cache_creates_no_primitive_after_the_first_step():
    misses, hits = primitives_created(CAPACITY)
    assert misses == 0 and hits > 100
    # A cache smaller than one step's primitives, as oneDNN's default 1024 is for the
    # supernet at F=8, L=12, generates kernels again every step.
    misses, hits = primitives_created(16)
    assert misses > 100
