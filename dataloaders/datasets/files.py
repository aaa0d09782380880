"""Reading image/label file pairs with one-line errors: shared by the real datasets.

A dataset here is a list of ``(image path, label path)`` pairs plus a function that turns a
label file into class ids (uint8, IGNORE_INDEX for ignored pixels). Layout problems are found
when the dataset is built (``check_headers``); pixel content when an item is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from dataloaders import DatasetInfo
from dataloaders.datasets import SegmentationDataset
from dataloaders.transforms import build_transforms
from utils.errors import UserError

# PIL reports damaged files through several exception types depending on the codec.
PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
INVALID = -1  # a lookup-table entry for label values that must not occur


def read_image(path: Path) -> Image.Image:
    """The decoded image (decoding now, so a truncated file fails here with its name)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except PIL_ERRORS as err:
        raise UserError(f"cannot read image {path} ({err}); replace or remove the file") from None


def read_rgb(path: Path) -> Image.Image:
    """An image file as RGB (grayscale, palette and RGBA files are converted)."""
    image = read_image(path)
    return image if image.mode == "RGB" else image.convert("RGB")


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only."""
    try:
        with Image.open(path) as im:
            return im.size
    except PIL_ERRORS as err:
        raise UserError(f"cannot read image {path} ({err}); replace or remove the file") from None


def check_headers(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Cheap build-time checks reading headers only: readable files of matching sizes.

    Labels that are not images (SBD ``.mat``) are checked when loaded.
    """
    for image_path, label_path in pairs:
        image_size = header_size(image_path)
        if label_path.suffix.lower() == ".mat":
            continue
        label_size = header_size(label_path)
        if image_size != label_size:
            raise UserError(
                f"annotation {label_path} is {label_size[0]}x{label_size[1]} but image "
                f"{image_path} is {image_size[0]}x{image_size[1]}; they must match"
            )


def label_values(path: Path) -> np.ndarray:
    """The raw values of a single-channel label image as uint8 (H, W).

    Palette ('P') images give their indices, which are the class ids (PASCAL VOC).
    """
    label = read_image(path)
    array = np.asarray(label)
    if array.ndim == 3:
        channels = array[..., : 1 if label.mode == "LA" else 3]
        if not (channels == channels[..., :1]).all():
            raise UserError(
                f"annotation {path} is a colour image; expected one channel of label ids"
            )
        array = channels[..., 0]
    if array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise UserError(
                f"annotation {path} holds values outside 0..255; expected 8-bit label ids"
            )
        array = array.astype(np.uint8)
    return array


def lookup_table(mapping: dict[int, int], default: int) -> np.ndarray:
    """A 256-entry table from raw label values to class ids (``default`` elsewhere)."""
    table = np.full(256, default, dtype=np.int16)
    for raw, class_id in mapping.items():
        table[raw] = class_id
    return table


def apply_table(raw: np.ndarray, table: np.ndarray, path: Path, expected: str) -> np.ndarray:
    """Map raw uint8 values through ``table``; values mapped to INVALID are a UserError."""
    mapped = table[raw]
    bad = mapped == INVALID
    if bad.any():
        values = np.unique(raw[bad])[:5].tolist()
        raise UserError(
            f"annotation {path} holds labels {values} outside {expected}; "
            "fix or remove the file"
        )
    return mapped.astype(np.uint8)


class FilePairs(SegmentationDataset):
    """Items read from ``(image, label)`` file pairs; ``read_label(path)`` gives class ids.

    ``read_label`` must be a module-level function so that spawned DataLoader workers can
    unpickle the dataset.
    """

    def __init__(
        self,
        info: DatasetInfo,
        pairs: list[tuple[Path, Path]],
        read_label: Callable[[Path], np.ndarray],
        transform,
    ):
        super().__init__(info, transform)
        self.pairs = pairs
        self.read_label = read_label

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int):
        image_path, label_path = self.pairs[index]
        image = read_rgb(image_path)
        mask = self.read_label(label_path)
        return image, mask_image(mask, image, label_path, image_path)


def mask_image(mask: np.ndarray, image: Image.Image, label_path, image_path) -> Image.Image:
    """``mask`` as an 'L' image, after checking that it covers ``image`` exactly."""
    if mask.shape != (image.height, image.width):
        raise UserError(
            f"annotation {label_path} is {mask.shape[1]}x{mask.shape[0]} but image "
            f"{image_path} is {image.width}x{image.height}; they must match"
        )
    return Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), "L")


def require_dir(path: Path, what: str, fix: str) -> Path:
    """``path`` if it is a folder, else a UserError naming it."""
    if not path.is_dir():
        raise UserError(f"{what} {path} does not exist; {fix}")
    return path


def require_file(path: Path, what: str, fix: str) -> Path:
    """``path`` if it is a file, else a UserError naming it."""
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; {fix}")
    return path


def read_ids(listing: Path, fix: str) -> list[str]:
    """The non-empty lines of a split list (first column), e.g. VOC ``ImageSets`` files."""
    require_file(listing, "split list", fix)
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"split list {listing} is empty; {fix}")
    return ids


def voc_colormap(count: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map: the bits of the index spread over R, G, B from the top bit.

    Index i's bits (b0 b1 b2)(b3 b4 b5)... set R, G and B's bits 7, 6, ... in turn, which keeps
    neighbouring indices far apart in colour; 0 is black and 255 (ignore) is near-white.
    """
    colours = []
    for index in range(count):
        r = g = b = 0
        c = index
        for bit in range(7, -1, -1):
            r |= (c & 1) << bit
            g |= ((c >> 1) & 1) << bit
            b |= ((c >> 2) & 1) << bit
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


# ImageNet statistics, as the DeepLab and torchvision references use for these datasets; the
# mean is rounded to whole 8-bit values so that padding with the mean normalises to exactly 0.
IMAGENET_MEAN = (124 / 255, 116 / 255, 104 / 255)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pairs_dataset(
    info: DatasetInfo,
    pairs: list[tuple[Path, Path]],
    read_label: Callable[[Path], np.ndarray],
    *,
    train: bool,
    crop_size: int,
    resize: int | None,
    scale_range: tuple[float, float],
    max_samples: int | None,
) -> FilePairs:
    """The first ``max_samples`` pairs, header-checked, with the standard transforms."""
    if max_samples is not None:
        pairs = pairs[:max_samples]
    check_headers(pairs)
    transform = build_transforms(
        info.mean, info.std, train=train, crop_size=crop_size, resize=resize,
        scale_range=scale_range,
    )
    return FilePairs(info, pairs, read_label, transform)
