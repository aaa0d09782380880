"""Datasets and loaders for segmentation: one place to name a dataset and get batches.

Every dataset item is ``(image, mask)``: image float32 (3, H, W) normalised with the dataset's
mean/std, mask int64 (H, W) holding class ids 0..num_classes-1 or ``IGNORE_INDEX``.

Reproducibility: augmentation draws from torch's RNG. ``build_loader`` seeds the shuffle
order and the loader's generator, from which DataLoader derives every worker's torch seed, so
the same seed gives the same batches. To make each *epoch* a function of (seed, epoch) alone,
so that a run resumed at epoch k sees exactly the batches an uninterrupted run would have seen
(persistent workers keep their RNG state from epoch to epoch otherwise), call
``loader.set_epoch(epoch)`` before iterating each epoch. ``set_epoch(epoch, start_batch=k)``
starts that epoch at its k-th batch without loading the first k: a run resumed mid-epoch
sees exactly the rest of the epoch (augmentation is seeded per (epoch, sample), so skipping
samples does not shift the draws of the others).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from utils.errors import UserError

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
SPLITS = ("train", "val", "test")
# Seed streams derived from a loader's seed, so that order and augmentation never share draws.
_ORDER_STREAM, _AUGMENT_STREAM = 0, 1


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and the reports need to know about a dataset."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB per class, for colouring predictions
    mean: tuple[float, float, float]  # per channel, images scaled to [0, 1]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        """Plain values, for checkpoints: a run keeps the classes it was trained with."""
        return {"name": self.name, "num_classes": self.num_classes,
                "class_names": list(self.class_names),
                "palette": [list(c) for c in self.palette], "mean": list(self.mean),
                "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        return cls(name=d["name"], num_classes=int(d["num_classes"]),
                   class_names=tuple(d["class_names"]),
                   palette=tuple(tuple(int(v) for v in c) for c in d["palette"]),
                   mean=tuple(d["mean"]), std=tuple(d["std"]))


# Where each real dataset is found when --data-root is not given, and what that folder holds.
ROOT_VARIABLES = {
    "ade20k": "AUTODEEPLAB_ADE20K",
    "camvid": "AUTODEEPLAB_CAMVID",
    "cityscapes": "AUTODEEPLAB_CITYSCAPES",
    "coco": "AUTODEEPLAB_COCO",
    "folder": "AUTODEEPLAB_FOLDER",
    "pascal": "AUTODEEPLAB_PASCAL",
}
_ROOT_CONTENTS = {
    "ade20k": "ADEChallengeData2016/",
    "camvid": "train/ and trainannot/",
    "cityscapes": "leftImg8bit/ and gtFine/",
    "coco": "annotations/ and train2017/",
    "folder": "images/ and masks/ (README, 'Your own data')",
    "pascal": "VOCdevkit/VOC2012/",
}


def _registry() -> dict:
    # Imported here, not at the top: the dataset modules import IGNORE_INDEX and DatasetInfo
    # from this package, which must be fully defined first.
    from dataloaders.datasets import (ade20k, camvid, cityscapes, coco, folder, pascal,
                                      planted_context, planted_operation, planted_sparks,
                                      synthetic)

    return {
        "synthetic": synthetic,
        "planted_context": planted_context,
        "planted_operation": planted_operation,
        "planted_sparks": planted_sparks,
        "camvid": camvid,
        "cityscapes": cityscapes,
        "pascal": pascal,
        "coco": coco,
        "ade20k": ade20k,
        "folder": folder,
    }


def dataset_names() -> tuple[str, ...]:
    """The names accepted by ``dataset_info`` and ``build_dataset``."""
    return tuple(sorted(_registry()))


def _module(name: str):
    registry = _registry()
    if name not in registry:
        raise UserError(
            f"unknown dataset '{name}'; pass --dataset with one of: {', '.join(sorted(registry))}"
        )
    return registry[name]


def is_generated(name: str) -> bool:
    """Whether dataset ``name`` is generated on the fly (synthetic, planted tasks): no files,
    sized by ``num_samples`` and ``image_size``."""
    return hasattr(_module(name), "generate")


def export_generated(name: str, out_dir, *, split: str = "val", count: int = 4, seed: int = 0,
                     image_size: tuple[int, int] | None = None) -> list:
    """Write `count` images of the generated dataset ``name`` and their labels as PNG files
    (``generated.export_samples``); the image paths."""
    if not is_generated(name):
        raise UserError(f"{name} is not a generated dataset; --dataset takes one of: "
                        + ", ".join(n for n in dataset_names() if is_generated(n)))
    if count <= 0:
        raise UserError(f"count must be positive, got {count}; fix --count")
    from dataloaders.datasets.generated import export_samples

    return export_samples(_module(name), out_dir, split=split, count=count, seed=seed,
                          image_size=image_size)


def dataset_info(name: str, data_root: str | None = None) -> DatasetInfo:
    """Class names, palette and normalisation constants of dataset ``name``. A dataset whose
    classes are read from its files (folder) needs ``data_root`` (or its environment
    variable)."""
    module = _module(name)
    if hasattr(module, "INFO"):
        return module.INFO
    from pathlib import Path

    return module.info(Path(_data_root(name, data_root)).expanduser())


def _data_root(name: str, data_root: str | None) -> str:
    """``data_root``, else the dataset's environment variable; a UserError naming both."""
    if data_root is None:
        data_root = os.environ.get(ROOT_VARIABLES[name]) or None
    if data_root is None:
        raise UserError(
            f"dataset {name} needs its files: pass --data-root or set "
            f"{ROOT_VARIABLES[name]} to the folder holding {_ROOT_CONTENTS[name]}"
        )
    return data_root


def build_dataset(
    name: str,
    split: str,
    *,
    data_root: str | None = None,
    train: bool,
    crop_size: int,
    resize: int | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
    num_samples: int | None = None,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
    max_samples: int | None = None,
    use_sbd: bool = False,
) -> Dataset:
    """Build split ``split`` ('train' | 'val' | 'test') of dataset ``name``.

    ``train=True`` applies the joint augmentation (optional resize of the shorter side to
    ``resize``, random scale in ``scale_range``, pad, random ``crop_size`` crop, random flip);
    ``train=False`` keeps the whole image (after the optional resize). ``num_samples`` and
    ``image_size`` (height, width) only concern generated datasets (synthetic, planted tasks),
    ``data_root`` only real datasets.
    ``max_samples`` keeps the first N samples, for quick runs. Without ``data_root`` a real
    dataset is looked for in its environment variable (``ROOT_VARIABLES``). ``use_sbd`` only
    concerns 'pascal': it adds the SBD images to the train split.
    """
    module = _module(name)
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; use one of: {', '.join(SPLITS)}")
    if train and crop_size <= 0:
        raise UserError(f"crop size must be positive, got {crop_size}; fix --crop-size")
    if resize is not None and resize <= 0:
        raise UserError(f"resize must be positive, got {resize}; fix --resize")
    low, high = scale_range
    if not 0 < low <= high:
        raise UserError(
            f"scale range must satisfy 0 < min <= max, got {tuple(scale_range)}; fix --scale-range"
        )
    if max_samples is not None and max_samples <= 0:
        raise UserError(f"max samples must be positive, got {max_samples}; fix --max-samples")
    options = {}
    if use_sbd:
        if name != "pascal":
            raise UserError(f"--use-sbd only applies to --dataset pascal, not {name}; drop it")
        options["use_sbd"] = True
    if is_generated(name):  # its size and seed, no files
        from dataloaders.datasets.generated import build_generated

        build = functools.partial(build_generated, module)
        options.update(num_samples=num_samples, image_size=image_size, seed=seed)
    else:
        build = module.build
        if num_samples is not None or image_size is not None:
            log.warning("%s ignores num_samples and image_size (they only shape "
                        "generated datasets)", name)
        options["data_root"] = _data_root(name, data_root)
    return build(
        split,
        train=train,
        crop_size=crop_size,
        resize=resize,
        scale_range=(float(low), float(high)),
        max_samples=max_samples,
        **options,
    )


def derive_seed(*parts: int) -> int:
    """A well-mixed 64-bit seed from several integers (e.g. run seed, epoch, index)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed.

    DataLoader already seeds torch in each worker from the loader generator; this extends that
    seed to any library code that uses numpy or ``random``.
    """
    import random

    import signal

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # Ctrl-C and SIGTERM reach the whole process group; the main process turns them into a
    # checkpoint and a clean exit, which needs its workers alive until then (they end with it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _kill_workers_at_exit() -> None:
    """atexit, in the main process: kill the DataLoader workers still alive (daemonic children).

    Workers ignore SIGTERM (`seed_worker`), so multiprocessing's own exit handler, which
    terminates daemonic children with SIGTERM and then joins them, would wait forever when the
    main process ends with an iterator still open: after an exception, say. Registered after
    multiprocessing's handler, this one runs first. Workers hold nothing to save."""
    import multiprocessing

    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join()


def _segmentation_datasets(dataset) -> Iterator:
    """The SegmentationDatasets underneath Subset / ConcatDataset wrappers."""
    from dataloaders.datasets import SegmentationDataset

    stack = [dataset]
    while stack:
        ds = stack.pop()
        if isinstance(ds, SegmentationDataset):
            yield ds
        elif hasattr(ds, "datasets"):
            stack.extend(ds.datasets)
        elif hasattr(ds, "dataset"):
            stack.append(ds.dataset)


class ResumableSampler(Sampler):
    """Wraps a sampler; its next pass starts at position ``start`` of the wrapped order.

    The wrapped order is still drawn in full (cheap: indices only), so the samples after
    ``start`` are the ones an unskipped pass yields there. ``len`` stays the full length.
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.start = 0

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.start, None)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class SeededDataLoader(DataLoader):
    """A DataLoader that remembers its seed and can make an epoch depend on (seed, epoch) only."""

    def __init__(self, *args, seed: int, order_generator: torch.Generator | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.order_generator = order_generator

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Call before iterating epoch ``epoch``: fixes its order and its augmentations.

        Reseeds the shuffle generator, gives the datasets underneath a per-(seed, epoch)
        augmentation seed that the (possibly persistent) workers read from shared memory, and
        forwards to the sampler's ``set_epoch`` (e.g. DistributedSampler) when it has one.
        The next pass skips the epoch's first ``start_batch`` batches without loading them.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside 0..{len(self)}")
        self.sampler.start = start_batch * self.batch_size
        if self.order_generator is not None:
            self.order_generator.manual_seed(derive_seed(self.seed, epoch, _ORDER_STREAM))
        self.generator.manual_seed(derive_seed(self.seed, epoch, _AUGMENT_STREAM))
        for ds in _segmentation_datasets(self.dataset):
            ds.set_augmentation_seed(derive_seed(self.seed, epoch, _AUGMENT_STREAM))
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def build_loader(
    dataset,
    *,
    batch_size: int,
    shuffle: bool,
    workers: int,
    device: torch.device,
    drop_last: bool,
    seed: int,
    sampler=None,
) -> SeededDataLoader:
    """A seeded DataLoader: pinned memory only for CUDA, persistent workers when workers > 0.

    With ``sampler`` given (e.g. DistributedSampler) ``shuffle`` is ignored: the sampler owns
    the order. Raises UserError when ``drop_last`` would leave no batch at all.
    """
    if batch_size <= 0:
        raise UserError(f"batch size must be positive, got {batch_size}; fix --batch-size")
    if workers < 0:
        raise UserError(f"number of workers must be >= 0, got {workers}; fix --workers")
    n = len(sampler) if sampler is not None else len(dataset)
    if n == 0 or (drop_last and n < batch_size):
        raise UserError(
            f"{n} samples cannot fill one batch of {batch_size}; "
            "lower --batch-size or raise --max-samples"
        )
    if workers > 0:
        atexit.unregister(_kill_workers_at_exit)  # once, and after multiprocessing's handler
        atexit.register(_kill_workers_at_exit)
    generator = torch.Generator()
    generator.manual_seed(seed)
    order_generator = None
    if sampler is None and shuffle:
        # The order gets a generator of its own: DataLoader's generator also feeds the worker
        # seeds, and a persistent-worker iterator skips that draw after its first epoch, which
        # would shift the order of a resumed run against an uninterrupted one.
        order_generator = torch.Generator()
        order_generator.manual_seed(derive_seed(seed, _ORDER_STREAM))
        sampler = RandomSampler(dataset, generator=order_generator)
    elif sampler is None:
        sampler = SequentialSampler(dataset)
    return SeededDataLoader(
        dataset,
        seed=seed,
        order_generator=order_generator,
        batch_size=batch_size,
        sampler=ResumableSampler(sampler),
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=workers > 0,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker,
    )
