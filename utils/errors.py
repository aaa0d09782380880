"""User-facing errors: one line that names the thing and the fix, and a non-zero exit."""
from __future__ import annotations

import functools
import gc
import logging
import sys


class UserError(Exception):
    """Something the user can fix (a path, a file, a flag). The message is one line."""


EXIT_USER_ERROR = 2
# Exception types of other layers that mean what UserError means, printed and exited alike;
# modeling/ cannot import this module, so its GenotypeError is added by engine/__init__.py.
_USER_ERRORS: list[type[Exception]] = [UserError]


def treat_as_user_error(error_type: type[Exception]) -> type[Exception]:
    """Have `exit_on_user_error` print `error_type` as a user error (one line, exit 2)."""
    if error_type not in _USER_ERRORS:
        _USER_ERRORS.append(error_type)
    return error_type


def exit_on_user_error(main):
    """Wrap an entry point: a UserError (or a type given to `treat_as_user_error`) prints
    `error: <message>` to stderr and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except tuple(_USER_ERRORS) as err:
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
