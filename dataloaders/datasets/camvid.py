"""CamVid in the 11-class SegNet layout.

``ROOT/{split}/`` holds RGB images and ``ROOT/{split}annot/`` single-channel annotations of the
same file names (class ids 0..10, 11 = Unlabelled, which becomes IGNORE_INDEX). When
``ROOT/{split}.txt`` exists, its lines ``{split}/x.png {split}annot/x.png`` (relative to ROOT)
define the split; otherwise files are paired by name across the two folders.

Problems a user can cause (missing root, split, list entry or file, empty split, unreadable or
truncated image, annotation of the wrong size or with unknown labels) raise UserError naming
the file or folder. Headers are checked when the dataset is built; pixel content (truncation,
label values) when an item is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dataloaders import IGNORE_INDEX, DatasetInfo
from dataloaders.datasets import SegmentationDataset
from dataloaders.transforms import build_transforms
from utils.errors import UserError


UNLABELLED = 11
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# PIL reports damaged files through several exception types depending on the codec.
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

# Mean/std over the 367 SegNet training images; the mean is rounded to whole 8-bit values so
# that padding with the mean colour normalises to exactly 0.
INFO = DatasetInfo(
    name="camvid",
    num_classes=11,
    class_names=(
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    ),
    # The SegNet CamVid colour code.
    palette=(
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ),
    mean=(105 / 255, 108 / 255, 110 / 255),
    std=(0.307, 0.312, 0.307),
)


def _resolve(root: Path, entry: str) -> Path:
    path = Path(entry)
    if not path.is_absolute():
        return root / path
    # The original SegNet lists hold absolute paths such as /SegNet/CamVid/train/x.png:
    # keep the last two components (folder/file) and look for them under root.
    return path if path.exists() else root / path.parent.name / path.name


def find_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, annotation) paths of ``split`` under ``root``, from the list file or the folders."""
    if not root.is_dir():
        raise UserError(
            f"camvid data root {root} does not exist; "
            "pass --data-root pointing at the folder holding train/ and trainannot/"
        )
    listing = root / f"{split}.txt"
    if listing.is_file():
        pairs = []
        for lineno, line in enumerate(listing.read_text().splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise UserError(
                    f"{listing}:{lineno}: expected 'image annotation', got {line!r}; "
                    "fix the list file"
                )
            pair = (_resolve(root, parts[0]), _resolve(root, parts[1]))
            for path in pair:
                if not path.is_file():
                    raise UserError(
                        f"{path} (listed in {listing}:{lineno}) does not exist; "
                        "restore it or fix the list file"
                    )
            pairs.append(pair)
        where = str(listing)
    else:
        image_dir, annot_dir = root / split, root / f"{split}annot"
        for folder in (image_dir, annot_dir):
            if not folder.is_dir():
                raise UserError(
                    f"camvid split '{split}' not found: neither {listing} nor folder {folder} "
                    "exists; check --data-root or pick another split"
                )
        annotations = {
            p.stem: p for p in annot_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        }
        pairs = []
        for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if image.stem not in annotations:
                raise UserError(
                    f"image {image} has no annotation in {annot_dir}; add it or remove the image"
                )
            pairs.append((image, annotations[image.stem]))
        where = str(image_dir)
    if not pairs:
        raise UserError(
            f"camvid split '{split}' is empty: {where} lists no images; check --data-root"
        )
    return pairs


def _check_header(image_path: Path, annot_path: Path) -> None:
    """Cheap checks that read headers only: readable files with matching sizes."""
    sizes = []
    for path in (image_path, annot_path):
        try:
            with Image.open(path) as im:
                sizes.append(im.size)
        except _PIL_ERRORS as err:
            raise UserError(
                f"cannot read image {path} ({err}); replace or remove the file"
            ) from None
    if sizes[0] != sizes[1]:
        raise UserError(
            f"annotation {annot_path} is {sizes[1][0]}x{sizes[1][1]} but image {image_path} is "
            f"{sizes[0][0]}x{sizes[0][1]}; they must match"
        )


def _read(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here with its name
            return im.copy()
    except _PIL_ERRORS as err:
        raise UserError(f"cannot read image {path} ({err}); replace or remove the file") from None


def load_annotation(path: Path, num_classes: int = INFO.num_classes) -> np.ndarray:
    """Class ids of an annotation file as uint8 (H, W), Unlabelled mapped to IGNORE_INDEX."""
    annot = _read(path)
    array = np.asarray(annot)  # 'P' gives palette indices, which are the class ids
    if array.ndim == 3:
        channels = array[..., : 1 if annot.mode == "LA" else 3]
        if not (channels == channels[..., :1]).all():
            raise UserError(
                f"annotation {path} is a colour image; "
                "expected one channel of class ids (the SegNet '*annot' files)"
            )
        array = channels[..., 0]
    array = array.astype(np.int64)
    array[array == UNLABELLED] = IGNORE_INDEX
    bad = ((array < 0) | (array >= num_classes)) & (array != IGNORE_INDEX)
    if bad.any():
        values = np.unique(array[bad])[:5].tolist()
        raise UserError(
            f"annotation {path} holds labels {values} outside 0..{num_classes - 1} "
            f"({UNLABELLED} = Unlabelled, {IGNORE_INDEX} = ignore); fix or remove the file"
        )
    return array.astype(np.uint8)


class CamVid(SegmentationDataset):
    """The pairs of one split; items are transformed ``(image, mask)`` tensors."""

    def __init__(self, pairs: list[tuple[Path, Path]], transform):
        super().__init__(INFO, transform)
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int):
        image_path, annot_path = self.pairs[index]
        image = _read(image_path)
        if image.mode != "RGB":  # grayscale, palette, RGBA, ...
            image = image.convert("RGB")
        mask = load_annotation(annot_path)
        if mask.shape != (image.height, image.width):
            raise UserError(
                f"annotation {annot_path} is {mask.shape[1]}x{mask.shape[0]} "
                f"but image {image_path} is "
                f"{image.width}x{image.height}; they must match"
            )
        return image, Image.fromarray(mask, "L")


def build(
    split,
    *,
    data_root,
    train,
    crop_size,
    resize,
    scale_range,
    max_samples,
):
    """See ``dataloaders.build_dataset``."""
    pairs = find_pairs(Path(data_root).expanduser(), split)
    if max_samples is not None:
        pairs = pairs[:max_samples]
    for image_path, annot_path in pairs:
        _check_header(image_path, annot_path)
    transform = build_transforms(
        INFO.mean,
        INFO.std,
        train=train,
        crop_size=crop_size,
        resize=resize,
        scale_range=scale_range,
    )
    return CamVid(pairs, transform)
