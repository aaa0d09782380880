"""utils/allocator.py: which library is preloaded, when, and the re-execution itself."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.allocator import ENV, fast_allocator_env, find_fast_allocator

REPO = Path(__file__).resolve().parents[1]


def fake_libraries(folder, *names):
    for name in names:
        (folder / name).write_bytes(b"")
    return (str(folder),)


def test_tcmalloc_is_preferred_and_nothing_is_found_in_an_empty_folder(tmp_path):
    dirs = fake_libraries(tmp_path, "libjemalloc.so.2", "libtcmalloc_minimal.so.4")
    assert find_fast_allocator(dirs) == str(tmp_path / "libtcmalloc_minimal.so.4")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_fast_allocator((str(empty),)) is None
    assert fast_allocator_env({}, (str(empty),)) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_preload_keeps_the_users_libraries_and_respects_opt_out(tmp_path):
    dirs = fake_libraries(tmp_path, "libjemalloc.so.2")
    env = fast_allocator_env({"LD_PRELOAD": "/opt/mine.so", "X": "1"}, dirs)
    assert env["LD_PRELOAD"] == f"{tmp_path}/libjemalloc.so.2:/opt/mine.so" and env["X"] == "1"
    assert fast_allocator_env(env, dirs) is None  # already preloaded: no second exec
    assert fast_allocator_env({ENV: "system"}, dirs) is None


@pytest.mark.skipif(fast_allocator_env() is None, reason="no tcmalloc/jemalloc installed here")
def test_process_reexecutes_once_with_the_allocator():
    code = ("import os, sys; print('start', os.getpid(), flush=True); "
            "from utils.allocator import preload_fast_allocator, allocator_in_use; "
            "preload_fast_allocator(); print(allocator_in_use(), sys.argv[1:])")
    env = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", ENV)}
    out = subprocess.run([sys.executable, "-c", code, "--flag", "x"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and lines[0] == lines[1]  # started twice, same process id
    assert "(LD_PRELOAD)" in lines[2] and "['--flag', 'x']" in lines[2]
