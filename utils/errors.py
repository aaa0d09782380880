"""User-facing errors: one line that names the thing and the fix, and a non-zero exit."""
from __future__ import annotations

import functools
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
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
