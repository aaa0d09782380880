"""Cityscapes, fine annotations, in the layout of the official download.

``ROOT/leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` with
``ROOT/gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` beside it (the
``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` archives unpacked in ROOT).
The labelIds are mapped to the 19 evaluation classes ("train ids" of cityscapesScripts'
``labels.py``); every other id (void classes, license plate, rare classes) becomes
IGNORE_INDEX. The search uses the fine train split at half resolution (paper section 4.1):
``--resize 512`` turns 1024 x 2048 into 512 x 1024, the search CLI's default for cityscapes.

Problems a user can cause (missing root or split folder, image without its labelIds file,
empty split, unreadable image, annotation of another size) raise UserError naming the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataloaders import IGNORE_INDEX, DatasetInfo
from dataloaders.datasets.files import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    apply_table,
    label_values,
    lookup_table,
    pairs_dataset,
    require_dir,
)
from utils.errors import UserError


IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"

# (labelId, name, colour) of the 19 evaluated classes, in train-id order (cityscapesScripts).
CLASSES = (
    (7, "road", (128, 64, 128)),
    (8, "sidewalk", (244, 35, 232)),
    (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)),
    (13, "fence", (190, 153, 153)),
    (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)),
    (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)),
    (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)),
    (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)),
    (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)),
    (33, "bicycle", (119, 11, 32)),
)
# labelId -> train id; every other value of the 8-bit labelIds files is ignored.
LABEL_TO_TRAIN = lookup_table(
    {label_id: train_id for train_id, (label_id, _, _) in enumerate(CLASSES)}, IGNORE_INDEX
)

INFO = DatasetInfo(
    name="cityscapes",
    num_classes=len(CLASSES),
    class_names=tuple(name for _, name, _ in CLASSES),
    palette=tuple(colour for _, _, colour in CLASSES),  # the official train-id colours
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)

_FIX = "check --data-root (or AUTODEEPLAB_CITYSCAPES): it must hold leftImg8bit/ and gtFine/"


def read_label(path: Path) -> np.ndarray:
    """Train ids (uint8 (H, W), IGNORE_INDEX elsewhere) of a ``*_gtFine_labelIds.png`` file."""
    return apply_table(label_values(path), LABEL_TO_TRAIN, path, "0..255")


def find_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, labelIds) paths of ``split``, sorted by city and file name."""
    require_dir(root, "cityscapes data root", _FIX)
    image_dir = require_dir(root / "leftImg8bit" / split, "cityscapes image folder", _FIX)
    label_dir = require_dir(root / "gtFine" / split, "cityscapes annotation folder", _FIX)
    pairs = []
    for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        for image in sorted(city.glob("*" + IMAGE_SUFFIX)):
            label = label_dir / city.name / (image.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX)
            if not label.is_file():
                raise UserError(
                    f"image {image} has no annotation {label}; "
                    "unpack gtFine_trainvaltest.zip into --data-root or remove the image"
                )
            pairs.append((image, label))
    if not pairs:
        raise UserError(
            f"cityscapes split '{split}' is empty: no <city>/*{IMAGE_SUFFIX} in {image_dir}; "
            + _FIX
        )
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
