"""Joint image/mask transforms built on PIL, numpy and torch only (no torchvision).

Every transform is called as ``t(image, mask, generator=None)`` and returns ``(image, mask)``,
where ``image`` is an RGB PIL image and ``mask`` an 8-bit ('L') PIL image of class ids.
The last step, :class:`ToTensorNormalize`, turns the pair into tensors.

Random transforms draw from torch's RNG (``generator`` if given, else the global one), never
from ``random`` or ``numpy.random``: DataLoader seeds torch in every worker from its own
generator, so seeding that generator is what makes augmentation reproducible.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from dataloaders import IGNORE_INDEX


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def _resize(image: Image.Image, mask: Image.Image, size: tuple[int, int]):
    # Nearest for the mask: interpolating class ids would invent classes at boundaries.
    return image.resize(size, Image.Resampling.BILINEAR), mask.resize(
        size, Image.Resampling.NEAREST
    )


class Compose:
    """Apply transforms in order, threading one generator through all of them."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, mask, generator: torch.Generator | None = None):
        for t in self.transforms:
            image, mask = t(image, mask, generator=generator)
        return image, mask

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class ResizeShorter:
    """Resize so that the shorter side equals ``size``, keeping the aspect ratio."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, mask, generator=None):
        w, h = image.size
        scale = self.size / min(w, h)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        if new == (w, h):
            return image, mask
        return _resize(image, mask, new)

    def __repr__(self) -> str:
        return f"ResizeShorter({self.size})"


class RandomScale:
    """Rescale both sides by one factor drawn uniformly from ``scale_range``."""

    def __init__(self, scale_range: tuple[float, float]):
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (float(low), float(high))

    def __call__(self, image, mask, generator=None):
        s = _uniform(*self.scale_range, generator)
        w, h = image.size
        new = (max(1, round(w * s)), max(1, round(h * s)))
        if new == (w, h):
            return image, mask
        return _resize(image, mask, new)

    def __repr__(self) -> str:
        return f"RandomScale({self.scale_range})"


class PadIfSmaller:
    """Pad on the right and bottom up to at least ``size`` x ``size``.

    The image is filled with ``fill`` (the dataset mean colour, so padding is zero after
    normalisation and carries no signal); the mask with ``IGNORE_INDEX`` so padded pixels
    take no part in the loss.
    """

    def __init__(self, size: int, fill: tuple[int, int, int], ignore_index: int = IGNORE_INDEX):
        self.size = size
        self.fill = tuple(int(v) for v in fill)
        self.ignore_index = ignore_index

    def __call__(self, image, mask, generator=None):
        w, h = image.size
        if w >= self.size and h >= self.size:
            return image, mask
        size = (max(w, self.size), max(h, self.size))
        padded_image = Image.new("RGB", size, self.fill)
        padded_image.paste(image, (0, 0))
        padded_mask = Image.new("L", size, self.ignore_index)
        padded_mask.paste(mask, (0, 0))
        return padded_image, padded_mask

    def __repr__(self) -> str:
        return f"PadIfSmaller({self.size}, fill={self.fill})"


class RandomCrop:
    """Crop a ``size`` x ``size`` window at a uniformly random position (input must be >= size)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, mask, generator=None):
        w, h = image.size
        if w < self.size or h < self.size:
            raise ValueError(f"RandomCrop({self.size}) got a {w}x{h} image; pad it first")
        x = _randint(0, w - self.size, generator)
        y = _randint(0, h - self.size, generator)
        box = (x, y, x + self.size, y + self.size)
        return image.crop(box), mask.crop(box)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class RandomHorizontalFlip:
    """Mirror image and mask together with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, mask, generator=None):
        if torch.rand((), generator=generator).item() < self.p:
            flip = Image.Transpose.FLIP_LEFT_RIGHT
            return image.transpose(flip), mask.transpose(flip)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ToTensorNormalize:
    """PIL pair -> (float32 image (3, H, W) normalised with mean/std, int64 mask (H, W))."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image, mask, generator=None):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        tensor = (tensor - self.mean) / self.std
        target = torch.from_numpy(np.asarray(mask, dtype=np.int64).copy())  # (H, W)
        return tensor.contiguous(), target

    def __repr__(self) -> str:
        mean, std = self.mean.flatten().tolist(), self.std.flatten().tolist()
        return f"ToTensorNormalize(mean={mean}, std={std})"


def mean_fill(mean: Sequence[float]) -> tuple[int, int, int]:
    """The 8-bit colour closest to ``mean`` (which is given in [0, 1])."""
    return tuple(int(round(m * 255)) for m in mean)


def build_transforms(
    mean: Sequence[float],
    std: Sequence[float],
    *,
    train: bool,
    crop_size: int,
    resize: int | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> Compose:
    """The standard pipeline.

    train: [resize shorter side] -> random scale -> pad to crop -> random crop -> random flip
    -> normalise. Evaluation: [resize shorter side] -> normalise (whole image).
    """
    steps: list = []
    if resize is not None:
        steps.append(ResizeShorter(resize))
    if train:
        steps += [
            RandomScale(scale_range),
            PadIfSmaller(crop_size, fill=mean_fill(mean)),
            RandomCrop(crop_size),
            RandomHorizontalFlip(),
        ]
    steps.append(ToTensorNormalize(mean, std))
    return Compose(steps)
