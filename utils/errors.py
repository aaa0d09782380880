"""User-facing errors: one line that names the thing and the fix, and a non-zero exit."""
from __future__ import annotations

import functools
import gc
import logging
import sys


class UserError(Exception):
    """Something the user can fix (a path, a file, a flag). The message is one line."""


EXIT_USER_ERROR = 2


def exit_on_user_error(main):
    """Wrap an entry point: a UserError prints `error: <message>` to stderr and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            logging.getLogger(__name__).debug("user error", exc_info=True)
            message = one_line(err)
            err.__traceback__ = None
        # Outside the handler nothing holds the failed run's frames: collecting them now shuts
        # down its DataLoader workers (which ignore SIGTERM, so exit could not end them).
        gc.collect()
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)

    return wrapper


def one_line(err: BaseException) -> str:
    """The user's message of `err`, also when a DataLoader worker wrapped it in a traceback
    (its last line then reads `utils.errors.UserError: <message>`)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    last = lines[-1]
    prefix = f"{UserError.__module__}.{UserError.__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else last
