"""Flag handling shared by the entry scripts: dataset-dependent defaults and resume merging."""
from __future__ import annotations

import argparse
import logging

from utils.errors import UserError

log = logging.getLogger(__name__)


def fill_defaults(args: argparse.Namespace, table: dict) -> argparse.Namespace:
    """Set every flag of `table` that is still None to the table's value."""
    for key, value in table.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def explicit_keys(args: argparse.Namespace, parser: argparse.ArgumentParser) -> set[str]:
    """The flags the user actually gave: those differing from `parser`'s defaults."""
    parser_defaults = vars(parser.parse_args([]))
    return {k for k, v in vars(args).items() if v != parser_defaults.get(k)}


def merge_resume_args(args: argparse.Namespace, saved: dict, explicit: set[str], *,
                      fixed_keys, safe_keys, current_keys=("resume",)) -> argparse.Namespace:
    """The checkpoint's flags `saved`, except those the user gave again that may change.

    A `fixed_keys` flag given with a different value is a UserError (it would change what the
    run computes). A `safe_keys` flag given explicitly replaces the saved value; any other
    differing flag is reported and the checkpoint's value kept. `current_keys` always take
    this invocation's value.
    """
    for key in sorted(explicit):
        if key not in saved or saved[key] == getattr(args, key):
            continue
        if key in fixed_keys:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} {getattr(args, key)} differs from the checkpoint's "
                            f"{saved[key]}; drop {flag} to resume, or start a new run")
        if key not in safe_keys and key not in current_keys:
            log.warning("ignoring --%s %s on resume: the checkpoint's value %s is kept",
                        key.replace("_", "-"), getattr(args, key), saved[key])
    merged = dict(saved)
    for key in explicit & set(safe_keys):
        merged[key] = getattr(args, key)
    for key in current_keys:
        merged[key] = getattr(args, key, None)
    for key, value in merged.items():
        setattr(args, key, value)
    return args


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a flag's default to its help, unless there is none or the help already says it
    (flags whose default depends on --dataset say so themselves)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default:" in text:
            return text
        return super()._get_help_string(action)


def dataset_default_help(paper: dict, synthetic: dict):
    """`help_for(key)` -> "(default: P for real datasets, S for synthetic)"."""

    def help_for(key: str) -> str:
        return f"(default: {paper[key]} for real datasets, {synthetic[key]} for synthetic)"

    return help_for


def dataset_help() -> str:
    """Help of --dataset: the registered names."""
    from dataloaders import dataset_names

    return "dataset name: " + ", ".join(dataset_names()) + " (synthetic is generated, no files)"
