"""Checkpoint and file I/O: atomic writes, and loading that fails with one clear line."""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from utils.errors import UserError

SEARCH_KIND = "autodeeplab-search"
RETRAIN_KIND = "autodeeplab-retrain"
# The layout of each kind's checkpoint: bumped when a reader can no longer read older ones.
# Version 2: the search network's two-layer stem and H(l-2) in its first layers, and the
# retrained network's down cells built as in the released model (both change the weights).
SEARCH_VERSION = 2
RETRAIN_VERSION = 2
VERSIONS = {SEARCH_KIND: SEARCH_VERSION, RETRAIN_KIND: RETRAIN_VERSION}
# Why a checkpoint of an older version cannot be loaded into today's network, and what to do.
LAST_COMMIT_OF_VERSION_1 = "934bafb"
OLDER_VERSIONS = {
    (SEARCH_KIND, 1): "its supernet had a three-conv stem and no H(l-2) in the first layer, so "
                      "its weights do not fit this one; decode_autodeeplab.py still decodes it "
                      "(alphas and betas keep their meaning), or start a new search",
    (RETRAIN_KIND, 1): "its down cells reduced H(l-1) before the cell (FactorizedReduce), so "
                       "its weights do not fit this network, whose down cells are the "
                       "released model's; retrain from its genotype (train.py --genotype), "
                       f"or use commit {LAST_COMMIT_OF_VERSION_1} of this project with it",
}
BEST_NAME = "best.pth.tar"  # beside checkpoint.pth.tar: the state at the best val score


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, flush it to disk, then rename over `path`.

    A crash or an exception inside `write` leaves the previous file at `path` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform; the data itself is already synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """torch.save `state` to `path` atomically; a failed write (a full disk) is a UserError
    that says the previous checkpoint is kept."""
    _write_or_explain(path, lambda tmp: torch.save(state, tmp))


def save_with_best(state: dict, path: str | os.PathLike, is_best: bool) -> None:
    """`save_checkpoint` to `path` and, when `is_best` (the best validation score so far),
    to best.pth.tar beside it."""
    save_checkpoint(state, path)
    if is_best:
        save_checkpoint(state, Path(path).with_name(BEST_NAME))


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    _write_or_explain(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def _write_or_explain(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as err:
        # torch.save's zip writer reports a failed write (a full disk) as a RuntimeError.
        if isinstance(err, RuntimeError) and not any(
                word in str(err) for word in ("write", "Writer", "inline_container")):
            raise
        reason = getattr(err, "strerror", None) or (str(err).strip().splitlines() or [""])[0]
        kept = "the previous one is kept" if Path(path).exists() else "nothing was written"
        raise UserError(f"cannot write {path} ({reason[:200]}); {kept}: free space or fix "
                        "the folder, then --resume") from err


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, *,
                    trust: bool = False) -> dict:
    """Load a checkpoint dict on the CPU with `weights_only=True` (no pickled code runs).

    `trust=True` (the user's --trust-checkpoint) loads with `weights_only=False`, which
    unpickles arbitrary objects and so can run code. Raises UserError naming the file if it
    is missing, truncated, holds pickled objects (without `trust`), is not a checkpoint of
    this project, or (when `kind` is given) a checkpoint of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the path of a checkpoint.pth.tar")
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        # weights_only refuses a class it does not know as an "Unsupported global"; any other
        # unpickling failure means the bytes are not a pickle at all.
        if not trust and "Unsupported global" in str(err):
            raise UserError(f"checkpoint {path} holds pickled Python objects, which can run "
                            "code when loaded; if you trust its source, pass "
                            "--trust-checkpoint to load it") from err
        raise UserError(f"checkpoint {path} cannot be read (truncated or not a PyTorch "
                        "checkpoint: its pickle data is invalid)") from err
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError,
            zipfile.BadZipFile) as err:
        raise _unreadable(path, err) from err
    if not isinstance(state, dict) or "kind" not in state:
        raise UserError(f"checkpoint {path} is not an Auto-DeepLab checkpoint (no 'kind' entry)")
    if kind is not None and state["kind"] != kind:
        raise UserError(f"checkpoint {path} is a '{state['kind']}' checkpoint, "
                        f"expected '{kind}'")
    if kind is not None:
        check_version(path, state)
    return state


def check_version(path: str | os.PathLike, state: dict) -> None:
    """UserError unless `state` has the version this code writes for its kind; for a known
    older version it says why it no longer fits and what to do instead."""
    kind, version = state["kind"], state.get("version")
    if version == VERSIONS.get(kind):
        return
    why = OLDER_VERSIONS.get((kind, version))
    if why is not None:
        raise UserError(f"checkpoint {path} is a version {version} {kind} checkpoint: {why}")
    raise UserError(f"checkpoint {path} has version {version!r}; this code reads {kind} "
                    f"version {VERSIONS.get(kind)}")


def _unreadable(path: Path, err: BaseException) -> UserError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"checkpoint {path} cannot be read (truncated or not a PyTorch "
                     f"checkpoint: {first[:200]})")
