"""What the two training scripts share while they run: the run folder and its outputs, the
checkpoints inside and at the end of an interval, and stopping on a signal.

An interval is an epoch of the search, or `--eval-interval` iterations of the retraining. Its
end writes checkpoint.pth.tar (and best.pth.tar); inside it a checkpoint is written every
`--checkpoint-interval` steps and when a signal asks the run to stop, which then ends with
`Interrupted`. Under torchrun rank 0 writes, and every rank stops at the same step.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

import torch

from engine.divergence import check_finite
from utils.allocator import allocator_in_use
from utils.checkpoint import save_checkpoint, save_with_best, write_json
from utils.distributed import DistInfo, agreed_stop, stop_if_requested
from utils.interrupt import Interrupted, StopSignals
from utils.onednn import size_primitive_cache
from utils.run import MetricsCSV, args_to_json, setup_logging, summary_writer

CHECKPOINT = "checkpoint.pth.tar"


class TrainingRun:
    """One run of a training script on this process.

    `out_dir`: the prepared run folder on rank 0 (None on other ranks, and where nothing is
    written); `state(step, position)`: the checkpoint dict of the run as it stands after
    `step`, with `position` the place inside an interval (None at an interval's end), set by
    the script once its model and optimisers exist.
    """

    def __init__(self, args: argparse.Namespace, dist_info: DistInfo, device: torch.device,
                 stop: StopSignals, out_dir: Path | None, log_file: str,
                 log: logging.Logger):
        self.args, self.dist_info, self.device, self.stop = args, dist_info, device, stop
        self.out_dir, self.log = out_dir, log
        self.checkpoint_path = out_dir / CHECKPOINT if out_dir is not None else None
        self.state: Callable[[int, object | None], dict] | None = None
        self.writer = self.metrics_csv = None
        if out_dir is not None:
            args.out_dir = str(out_dir)
            setup_logging(out_dir / log_file)
        else:
            setup_logging(None, logging.INFO if dist_info.is_main else logging.WARNING)
        log.info("command: %s", " ".join(sys.argv))
        log.info("memory allocator: %s; oneDNN primitive cache: %s", allocator_in_use(),
                 size_primitive_cache())

    def open_outputs(self, done: int, key: str) -> None:
        """args.json, TensorBoard and metrics.csv (rows past `done`, the checkpoint's `key`
        column, dropped) in the run folder; nothing off rank 0."""
        if self.out_dir is None:
            return
        write_json(args_to_json(self.args), self.out_dir / "args.json")
        self.writer = summary_writer(self.out_dir)
        self.metrics_csv = MetricsCSV(self.out_dir / "metrics.csv")
        self.metrics_csv.truncate_after(done, key=key)

    def after_step(self, model: torch.nn.Module, step: int, position,
                   interval_ends: bool) -> None:
        """After every training step: a checkpoint every --checkpoint-interval steps (the
        interval's last step excepted: its end writes one) and on a stop signal, which then
        raises `Interrupted`."""
        requested = agreed_stop(self.stop.requested, self.dist_info, self.device)
        interval = self.args.checkpoint_interval
        due = interval and step % interval == 0 and not interval_ends
        if (due or requested) and self.checkpoint_path is not None:
            check_finite(model, step)
            save_checkpoint(self.state(step, position), self.checkpoint_path)
        if requested:
            raise Interrupted(requested, self.checkpoint_path)

    def end_interval(self, step: int, is_best: bool) -> None:
        """The interval's checkpoint (and best.pth.tar when `is_best`); then stop if a signal
        arrived in its last moments."""
        if self.checkpoint_path is not None:
            save_with_best(self.state(step, None), self.checkpoint_path, is_best)
        stop_if_requested(self.stop, self.dist_info, self.device, self.checkpoint_path)

    def add_scalars(self, scalars, step: int) -> None:
        """TensorBoard scalars (tag, value) at `step`, on rank 0."""
        if self.writer is None:
            return
        for tag, value in scalars:
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
