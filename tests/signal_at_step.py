"""Run an entry script that signals itself right after its optimizers' COUNT-th step.

    python tests/signal_at_step.py COUNT SIGNUM WHO SCRIPT [ARGS...]

WHO is `self`, `group` (the whole process group, as a terminal's Ctrl-C) or `rank=N` (only the
torchrun worker of that rank signals itself). Weight and architecture steps both count. The
kill tests use it instead of signalling from outside once a checkpoint appears: that races
the run, and on a fast machine a tiny run ends before the signal lands.
"""
import os
import runpy
import sys

from torch.optim.optimizer import register_optimizer_step_post_hook

count, signum, who = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
calls = 0


def signal_at_step(optimizer, args, kwargs):
    global calls
    calls += 1
    if calls != count:
        return
    if who == "group":
        os.killpg(os.getpgrp(), signum)
    else:
        os.kill(os.getpid(), signum)


if who in ("self", "group", f"rank={os.environ.get('RANK')}"):  # other ranks run unchanged
    register_optimizer_step_post_hook(signal_at_step)
sys.argv = sys.argv[4:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
