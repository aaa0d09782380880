"""Flag handling shared by the entry scripts: dataset-dependent defaults and resume merging."""
from __future__ import annotations

import argparse
import logging

from utils.amp import AMP_DTYPE_CHOICES
from utils.checkpoint import load_checkpoint
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
                      fixed_keys, safe_keys, current_keys=("resume",),
                      override=()) -> argparse.Namespace:
    """The checkpoint's flags `saved`, except those the user gave again that may change.

    A `fixed_keys` flag given with a different value is a UserError (it would change what the
    run computes). A `safe_keys` flag given explicitly replaces the saved value, and so does
    a flag named in `override` (the user's --override list: names with or without dashes);
    any other differing flag is reported and the checkpoint's value kept. `current_keys`
    always take this invocation's value.
    """
    overridden = {name.lstrip("-").replace("-", "_") for name in override}
    for key in sorted(overridden):
        flag = "--" + key.replace("_", "-")
        if key in fixed_keys:
            raise UserError(f"--override {flag}: {flag} fixes the model or the data and cannot "
                            "change on resume; start a new run")
        if key not in vars(args) or key in current_keys:
            raise UserError(f"--override {key}: not a flag that a checkpoint keeps; name "
                            "flags as in 'lr' or 'arch-lr'")
        if key not in explicit:
            raise UserError(f"--override names {flag} but {flag} is not given; pass the "
                            "value to use")
    for key in sorted(explicit):
        if key not in saved or saved[key] == getattr(args, key) or key in current_keys:
            continue
        flag = "--" + key.replace("_", "-")
        if key in fixed_keys:
            raise UserError(f"{flag} {getattr(args, key)} differs from the checkpoint's "
                            f"{saved[key]}; drop {flag} to resume, or start a new run")
        if key in overridden:
            log.warning("--override: %s %s replaces the checkpoint's %s", flag,
                        getattr(args, key), saved[key])
        elif key in safe_keys:
            log.info("%s %s replaces the checkpoint's %s", flag, getattr(args, key), saved[key])
        else:
            log.warning("ignoring %s %s on resume: the checkpoint's value %s is kept "
                        "(--override %s to use yours)", flag, getattr(args, key), saved[key],
                        key.replace("_", "-"))
    merged = dict(saved)
    for key in explicit & (set(safe_keys) | overridden):
        merged[key] = getattr(args, key)
    for key in current_keys:
        merged[key] = getattr(args, key, None)
    for key, value in merged.items():
        setattr(args, key, value)
    return args


def resume_args(args: argparse.Namespace, explicit: set[str], *, kind: str, fixed_keys,
                safe_keys, current_keys) -> tuple[argparse.Namespace, dict | None]:
    """(args, checkpoint): with --resume, the checkpoint (of `kind`) and the flags merged with
    its saved ones by `merge_resume_args`; without, (args, None), and --override is an error."""
    if not args.resume:
        if args.override:
            raise UserError("--override only applies with --resume; drop it")
        return args, None
    checkpoint = load_checkpoint(args.resume, kind=kind, trust=args.trust_checkpoint)
    args = merge_resume_args(args, checkpoint["args"], explicit, fixed_keys=fixed_keys,
                             safe_keys=safe_keys, current_keys=current_keys,
                             override=args.override)
    return args, checkpoint


def add_amp_args(group, scaled: str) -> None:
    """--amp and --amp-dtype (utils/amp.py), shared by the three scripts that run a network;
    `scaled`: what fp16's loss scaling applies to, for the help ("" where nothing trains)."""
    group.add_argument("--amp", action="store_true",
                       help="mixed precision on CUDA (torch.amp autocast; ignored with a "
                            "warning on the CPU)")
    group.add_argument("--amp-dtype", default="auto", choices=AMP_DTYPE_CHOICES,
                       help="autocast dtype of --amp" + (f"; fp16 adds loss scaling to {scaled}"
                                                         if scaled else "")
                       + "; auto: bf16 where the GPU has it natively, else fp16")


def add_run_safety_args(group, checkpoint_interval: int, unit: str) -> None:
    """Flags both training scripts share: mid-run checkpoints, resume overrides, trusting a
    pickled checkpoint, autograd anomaly detection."""
    group.add_argument("--checkpoint-interval", type=int, default=checkpoint_interval,
                       metavar="N",
                       help=f"also write checkpoint.pth.tar every N iterations inside {unit} "
                            "(0: only at their ends), so a killed run loses at most N "
                            "iterations; SIGINT/SIGTERM always write one before exiting")
    group.add_argument("--override", nargs="+", default=(), metavar="FLAG",
                       help="with --resume: flags (e.g. lr arch-lr) whose value given now "
                            "replaces the checkpoint's; others keep the checkpoint's value")
    group.add_argument("--trust-checkpoint", action="store_true",
                       help="load a checkpoint holding pickled Python objects (it can run "
                            "code: only for files from a source you trust)")
    group.add_argument("--detect-anomaly", action="store_true",
                       help="torch autograd anomaly detection: name the operation that made a "
                            "NaN gradient (slow; for diagnosis)")


# Flags of `add_run_safety_args` that belong to one invocation only.
RUN_SAFETY_CURRENT_KEYS = ("override", "trust_checkpoint", "detect_anomaly")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a flag's default to its help, unless there is none or the help already says it
    (flags whose default depends on --dataset say so themselves)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default:" in text:
            return text
        return super()._get_help_string(action)


def dataset_default_help(paper: dict, per_dataset: dict):
    """`help_for(key)` -> "(default: P; X for cityscapes, S for synthetic)": the paper's
    default and every dataset of `per_dataset` whose default differs from it."""

    def help_for(key: str) -> str:
        others = [f"{table[key]} for {name}" for name, table in per_dataset.items()
                  if table[key] != paper[key]]
        return f"(default: {paper[key]}" + (f"; {', '.join(others)})" if others else ")")

    return help_for


def dataset_help() -> str:
    """Help of --dataset: the registered names."""
    from dataloaders import dataset_names

    return ("dataset name: " + ", ".join(dataset_names())
            + " (synthetic and the planted_* tasks are generated, no files)")


def require_positive(args: argparse.Namespace, keys) -> None:
    """One line for the first flag of `keys` that is given and not positive."""
    for key in keys:
        value = getattr(args, key)
        if value is not None and value <= 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive, got {value}")


def require_non_negative(args: argparse.Namespace, keys) -> None:
    """One line for the first flag of `keys` that is negative."""
    for key in keys:
        value = getattr(args, key)
        if value < 0:
            raise UserError(f"--{key.replace('_', '-')} must be >= 0, got {value}")


def require_two_images(batch_size: int, processes: int = 1, alternative: str = "") -> None:
    """Training needs two images per batch norm: the ASPP image pooling's batch norm
    normalises one value per image and channel. `processes` whose batch norm is synchronised
    pool their batches; `alternative` says in the message how else to meet the rule."""
    if batch_size * processes < 2:
        raise UserError(f"--batch-size must be at least 2{alternative}: batch norm in the ASPP "
                        "image pooling needs two values per channel")

