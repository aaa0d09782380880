"""ADE20K as the MIT Scene Parsing benchmark releases it (ADEChallengeData2016).

``ROOT/ADEChallengeData2016/`` (ROOT may be that folder itself) holds
``images/{training,validation}/ADE_*.jpg`` and ``annotations/{training,validation}/ADE_*.png``
of the same names. Annotation values 1..150 are the 150 classes (ids 0..149 here); 0 is
"other objects", ignored (IGNORE_INDEX) as in the benchmark. Splits: train = training,
val = validation; the benchmark's test images have no public annotations.

Class names are the first name of each class in the benchmark's ``objectInfo150.csv``.
Palette: the PASCAL VOC bit-interleaved colour map at indices 1..150 (skipping black, index 0),
chosen because it is deterministic, needs no data file and keeps neighbouring classes apart;
it is not the benchmark's own colour table.

Problems a user can cause (missing root or folder, image without annotation, empty split,
unreadable image, annotation of another size or with values above 150) raise UserError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataloaders import IGNORE_INDEX, DatasetInfo
from dataloaders.datasets.files import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INVALID,
    apply_table,
    label_values,
    lookup_table,
    pairs_dataset,
    require_dir,
    voc_colormap,
)
from utils.errors import UserError


FOLDER = "ADEChallengeData2016"
SPLIT_FOLDERS = {"train": "training", "val": "validation"}
OTHER = 0  # "other objects": not one of the 150 classes

CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
INFO = DatasetInfo(
    name="ade20k",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    palette=voc_colormap(len(CLASS_NAMES) + 1)[1:],
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
# 0 (other) is ignored, 1..150 shift down by one; values above 150 are errors.
LABEL_TABLE = lookup_table(
    {OTHER: IGNORE_INDEX, **{v: v - 1 for v in range(1, INFO.num_classes + 1)}}, INVALID
)
_FIX = f"check --data-root (or AUTODEEPLAB_ADE20K): it must hold {FOLDER}/"


def read_label(path: Path) -> np.ndarray:
    """Class ids (uint8 (H, W), 0 'other' -> IGNORE_INDEX) of an ADE20K annotation PNG."""
    return apply_table(label_values(path), LABEL_TABLE, path, f"0..{INFO.num_classes}")


def challenge_folder(root: Path) -> Path:
    """``ADEChallengeData2016`` under ``root`` (or ``root`` itself)."""
    require_dir(root, "ade20k data root", _FIX)
    for candidate in (root / FOLDER, root):
        if (candidate / "images").is_dir():
            return candidate
    raise UserError(f"ADE20K folder {root / FOLDER / 'images'} does not exist; {_FIX}")


def find_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(jpg, png) paths of ``split``, sorted by name."""
    if split not in SPLIT_FOLDERS:
        raise UserError(
            f"ade20k has no annotated '{split}' split; use train or val (--split val)"
        )
    base = challenge_folder(root)
    image_dir = require_dir(base / "images" / SPLIT_FOLDERS[split], "ADE20K image folder", _FIX)
    label_dir = require_dir(
        base / "annotations" / SPLIT_FOLDERS[split], "ADE20K annotation folder", _FIX
    )
    pairs = []
    for image in sorted(image_dir.glob("*.jpg")):
        label = label_dir / f"{image.stem}.png"
        if not label.is_file():
            raise UserError(
                f"image {image} has no annotation {label}; restore it or remove the image"
            )
        pairs.append((image, label))
    if not pairs:
        raise UserError(f"ade20k split '{split}' is empty: no .jpg in {image_dir}; {_FIX}")
    return pairs


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
    return pairs_dataset(
        INFO, pairs, read_label, train=train, crop_size=crop_size, resize=resize,
        scale_range=scale_range, max_samples=max_samples,
    )
