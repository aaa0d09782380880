"""Datasets generated on the fly: no files, every scene a function of (seed, split, index).

A generated dataset module (synthetic, the planted tasks) defines ``INFO``, ``DEFAULTS`` and
``generate(rng, height, width) -> (uint8 image (H, W, 3), uint8 mask (H, W))``;
``dataloaders.build_dataset`` builds its splits with ``build_generated``, and write_samples.py
writes a few of its images (``export_samples``). Augmentation (train) is applied afterwards
with torch's RNG like any dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from dataloaders import DatasetInfo
from dataloaders.datasets import SegmentationDataset
from dataloaders.transforms import build_transforms
from utils.errors import UserError

_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}  # a different seed stream per split


@dataclass(frozen=True)
class GeneratedDefaults:
    """A generated dataset's size when --num-samples / --image-size are not given, and the
    random-scale range of its training augmentation (None: the caller's)."""

    num_samples: dict  # split -> images
    image_size: tuple[int, int]  # (height, width)
    scale_range: tuple[float, float] | None = None


class GeneratedSegmentation(SegmentationDataset):
    """``num_samples`` scenes of ``image_size`` (height, width) drawn by ``generate``."""

    def __init__(self, info: DatasetInfo, generate: Callable, split: str, *, num_samples: int,
                 image_size: tuple[int, int], seed: int, transform):
        super().__init__(info, transform)
        self.generate = generate
        self.split = split
        self.num_samples = num_samples
        self.image_size = tuple(image_size)
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def load(self, index: int):
        # A local generator keyed by (seed, split, index): no global state, any order, any worker.
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[self.split], index])
        image, mask = self.generate(rng, *self.image_size)
        return Image.fromarray(image, "RGB"), Image.fromarray(mask, "L")


def build_generated(module, split, *, train, crop_size, resize, scale_range, num_samples,
                    image_size, seed, max_samples) -> GeneratedSegmentation:
    """Split `split` of the generated dataset `module` (see ``dataloaders.build_dataset``)."""
    defaults: GeneratedDefaults = module.DEFAULTS
    num_samples = defaults.num_samples[split] if num_samples is None else num_samples
    image_size = defaults.image_size if image_size is None else tuple(image_size)
    if num_samples <= 0:
        raise UserError(f"{module.INFO.name} dataset needs at least one sample, got "
                        f"{num_samples}; fix --num-samples")
    if len(image_size) != 2 or min(image_size) < 16:
        raise UserError(f"{module.INFO.name} image size must be (height, width) of at least "
                        f"16, got {image_size}; fix --image-size")
    if max_samples is not None:
        num_samples = min(num_samples, max_samples)
    transform = build_transforms(module.INFO.mean, module.INFO.std, train=train,
                                 crop_size=crop_size, resize=resize,
                                 scale_range=defaults.scale_range or scale_range)
    return GeneratedSegmentation(module.INFO, module.generate, split, num_samples=num_samples,
                                 image_size=image_size, seed=seed, transform=transform)


def export_samples(module, out_dir, *, split: str = "val", count: int = 4, seed: int = 0,
                   image_size: tuple[int, int] | None = None) -> list[Path]:
    """Write `count` generated images of `module` as `<split>_NNN.png` to `out_dir` and their
    labels (class ids) to `out_dir/labels/`: files to try predict.py on. Returns the image
    paths."""
    out = Path(out_dir)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    dataset = GeneratedSegmentation(module.INFO, module.generate, split, num_samples=count,
                                    seed=seed, transform=None,
                                    image_size=image_size or module.DEFAULTS.image_size)
    paths = []
    for i in range(count):
        image, mask = dataset.load(i)
        paths.append(out / f"{split}_{i:03d}.png")
        image.save(paths[-1])
        mask.save(out / "labels" / f"{split}_{i:03d}.png")
    return paths
