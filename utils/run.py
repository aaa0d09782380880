"""Run folders, logging, seeding and device choice, shared by the three entry scripts."""
from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint import atomic_write
from utils.errors import UserError

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to `log_file` (appending, so resumes keep history)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
    root.addHandler(stream)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Global RNG states in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        # This process's GPU only: every process seeds and draws alike, so rank 0's device state
        # (the one saved) is each rank's own, whichever GPU it runs on and however many the
        # resuming machine has.
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"])
    elif "cuda" in state:  # older checkpoints: one state per GPU of the saving process
        index = torch.cuda.current_device()
        if index < len(state["cuda"]):
            torch.cuda.set_rng_state(state["cuda"][index])
        else:
            logging.getLogger(__name__).warning(
                "the checkpoint holds no CUDA random state for GPU %d (saved with %d); it "
                "keeps its seeded state, so dropout and drop path differ from an "
                "uninterrupted run", index, len(state["cuda"]))


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def select_device(name: str | None) -> torch.device:
    """`name` ('cpu', 'cuda', 'cuda:1') or, when None, CUDA if available, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device '{name}'; use --device cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but CUDA is not available here; "
                        "use --device cpu")
    return device


def tune_for_fixed_shapes(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per input shape and keep the
    fastest (`cudnn.benchmark`): training crops have one shape, so the search and the
    retraining pay the timing once. Results may then differ in the last bits from run to run
    on a GPU; bit-identical resumes are promised on the CPU only. Nothing on other devices."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def default_run_dir(dataset: str, stage: str) -> Path:
    """run/<dataset>/<stage>-<time>: a new folder per run, so nothing is overwritten."""
    return Path("run") / dataset / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(out_dir: str | None, resume: str | None, dataset: str, stage: str) -> Path:
    """The run folder, made if needed and locked for this process: `out_dir`, else the
    folder of the `resume` checkpoint, else a new `default_run_dir` (a suffix -2, -3, ... when
    a run started in the same second took the name).

    A folder that already holds a checkpoint is refused, unless it is the folder of the
    checkpoint being resumed, so nothing is overwritten by accident; so is a folder another
    live process is writing to (an advisory lock, released by the kernel however the process
    ends, SIGKILL included).
    """
    if out_dir or resume:
        path = Path(out_dir) if out_dir else Path(resume).parent
        same_run = resume is not None and _same_folder(path, Path(resume).parent)
        if not same_run and (path / "checkpoint.pth.tar").exists():
            raise UserError(f"run folder {path} already holds a {stage} run; pass --resume "
                            f"{path / 'checkpoint.pth.tar'} to continue it, or a new --out-dir")
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = _new_folder(default_run_dir(dataset, stage))
    _lock(path)
    return path


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _new_folder(base: Path) -> Path:
    base.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        path = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"cannot make a new run folder next to {base}; pass --out-dir")


_LOCKS: dict[Path, object] = {}  # open lock files, held until the process ends
LOCK_FILE = ".lock"


def _lock(path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        return
    key = path.resolve()
    if key in _LOCKS:  # this process already holds it (several runs in one interpreter)
        return
    handle = open(path / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(f"run folder {path} is in use by another process (pid {owner}); "
                        "wait for it to end, or pass another --out-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _LOCKS[key] = handle


def release_run_dir(path: Path | None = None) -> None:
    """Give up this process's lock of run folder `path` (of all its run folders when None),
    at the end of a run."""
    keys = list(_LOCKS) if path is None else [Path(path).resolve()]
    for key in keys:
        handle = _LOCKS.pop(key, None)
        if handle is not None:
            handle.close()


def args_to_json(args: argparse.Namespace) -> dict:
    """The flags as JSON-able values (paths and tuples become strings and lists)."""
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


class MetricsCSV:
    """metrics.csv: one row per epoch; the header is taken from the first row written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def truncate_after(self, epoch: int, key: str = "epoch") -> None:
        """Drop rows whose `key` column exceeds `epoch` (rows a killed run wrote past its
        checkpoint); `key` may name another counter, e.g. "step"."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return
        keep = [r for r in rows if int(r[key]) <= epoch]
        if len(keep) == len(rows):
            return

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(keep)

        atomic_write(self.path, write)  # a crash here must not lose the rows kept


def summary_writer(out_dir: Path):
    """A TensorBoard writer for `out_dir`: tensorboardX's (requirements.txt), else torch's own,
    which needs the `tensorboard` package (GPU images often have that one only)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(out_dir))

