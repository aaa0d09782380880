"""Stopping a run cleanly: SIGINT / SIGTERM become a checkpoint at the next iteration boundary.

The handler only records the signal; the training loop polls `StopSignals.requested` between
iterations, writes its checkpoint there (never from inside the handler, where the state may
be half-updated) and exits with the shell's code for the signal (130 for SIGINT, 143 for
SIGTERM). A second signal before that restores the previous handlers and re-delivers it, so
an impatient Ctrl-C still ends the process at once; atomic writes keep the last checkpoint.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Raised by a training loop after it saved its checkpoint because a signal asked it to."""

    def __init__(self, signum: int, checkpoint):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended."""
        return 128 + self.signum


def exit_after_stop(err: Interrupted, script: str, distributed: bool):
    """Say how to continue from the checkpoint the stop wrote (on the process that wrote
    one), then exit with the shell's code for the signal."""
    if err.checkpoint is not None:
        launch = "torchrun ..." if distributed else "python"
        log.warning("%s: checkpoint %s written; continue with: %s %s --resume %s", err,
                    err.checkpoint, launch, script, err.checkpoint)
    sys.exit(err.exit_code)


class StopSignals:
    """Context manager: while inside, SIGINT and SIGTERM set `requested` (the signal number).

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.requested is not None:  # the second one: stop waiting for the loop
            self.restore()
            os.kill(os.getpid(), signum)
            return
        self.requested = signum
        log.warning("%s received: saving a checkpoint at the end of this iteration, then "
                    "exiting (send it again to exit at once)", signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __exit__(self, *exc) -> None:
        self.restore()
