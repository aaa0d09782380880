"""Segmentation datasets. Each file-backed module defines ``INFO`` (DatasetInfo) and
``build(split, ...)``; each generated one ``INFO``, ``DEFAULTS`` and ``generate`` (generated.py)."""

from __future__ import annotations

import copy

import torch
from PIL import Image
from torch.utils.data import Dataset

from dataloaders import DatasetInfo, derive_seed

_UNSET = -1


class SegmentationDataset(Dataset):
    """Base class: subclasses implement ``__len__`` and ``load(index) -> (PIL RGB, PIL 'L' mask)``.

    ``__getitem__`` applies ``transform`` and returns ``(image, mask)`` tensors. Augmentation
    draws from torch's global RNG, unless ``set_augmentation_seed`` was called: then each item
    draws from its own generator seeded by (augmentation seed, index), which makes an epoch
    independent of worker count, worker RNG history and resumes.
    """

    def __init__(self, info: DatasetInfo, transform):
        self.info = info
        self.transform = transform
        # A shared-memory scalar, so that persistent DataLoader workers (forked or spawned
        # once) see the value the main process sets at the start of each epoch.
        self._augmentation_seed = torch.full((), _UNSET, dtype=torch.int64).share_memory_()

    def set_augmentation_seed(self, seed: int | None) -> None:
        """Seed augmentation per item from ``seed``; None returns to torch's global RNG."""
        # Kept non-negative and within int64: the value is stored in an int64 tensor.
        self._augmentation_seed.fill_(_UNSET if seed is None else int(seed) % 2**63)

    def twin(self) -> "SegmentationDataset":
        """A shallow copy with an augmentation seed of its own.

        Two loaders over one dataset (search halves A and B) must not share the seed: each
        loader's ``set_epoch`` would change the other's augmentations, depending on timing when
        workers prefetch.
        """
        twin = copy.copy(self)
        twin._augmentation_seed = torch.full((), _UNSET, dtype=torch.int64).share_memory_()
        return twin

    def _item_generator(self, index: int) -> torch.Generator | None:
        seed = int(self._augmentation_seed.item())
        if seed == _UNSET:
            return None
        generator = torch.Generator()
        generator.manual_seed(derive_seed(seed, index))
        return generator

    def load(self, index: int) -> tuple[Image.Image, Image.Image]:
        """The raw pair before any transform: RGB image, 'L' mask with IGNORE_INDEX applied."""
        raise NotImplementedError

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, mask = self.load(index)
        return self.transform(image, mask, generator=self._item_generator(index))
