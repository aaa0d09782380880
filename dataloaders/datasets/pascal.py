"""PASCAL VOC 2012 segmentation, optionally augmented with SBD, in their download layouts.

VOC: ``ROOT/VOCdevkit/VOC2012/`` (ROOT may also be ``VOCdevkit/`` or ``VOC2012/`` itself) with
``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette images whose indices are the
21 class ids; the object borders hold 255, ignored) and ``ImageSets/Segmentation/{split}.txt``.

SBD (``use_sbd``, the ``--use-sbd`` flag): the ``benchmark_RELEASE/dataset/`` folder of the SBD
download, with ``img/<id>.jpg``, ``cls/<id>.mat`` (MATLAB struct ``GTcls.Segmentation``, class
ids 0..20) and ``train.txt`` / ``val.txt``. It is found at ``$AUTODEEPLAB_SBD`` or else at
``ROOT/benchmark_RELEASE``. The augmented train split ("trainaug", 10582 images with the full
data) is VOC train plus every SBD image (its train and val lists) that is neither in VOC val,
which stays untouched for evaluation, nor in VOC train, whose VOC annotation is kept. Only the
train split changes; val and test are VOC's.

Problems a user can cause (missing root, folder, split list or listed file, unreadable image or
``.mat``, annotation of another size, labels outside 0..20 and 255) raise UserError naming it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import scipy.io

from dataloaders import IGNORE_INDEX, DatasetInfo
from dataloaders.datasets.files import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INVALID,
    apply_table,
    label_values,
    lookup_table,
    pairs_dataset,
    read_ids,
    require_dir,
    require_file,
    voc_colormap,
)
from utils.errors import UserError

log = logging.getLogger(__name__)

OPTIONS = ("use_sbd",)
SBD_VARIABLE = "AUTODEEPLAB_SBD"
SBD_FOLDER = "benchmark_RELEASE"  # what the SBD archive unpacks to

CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
INFO = DatasetInfo(
    name="pascal",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    palette=voc_colormap(len(CLASS_NAMES)),  # the colours of the SegmentationClass files
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
# Class ids stay as they are; 255 is the ignored border; anything else is an error.
LABEL_TABLE = lookup_table(
    {**{i: i for i in range(INFO.num_classes)}, IGNORE_INDEX: IGNORE_INDEX}, INVALID
)
_EXPECTED = f"0..{INFO.num_classes - 1} and {IGNORE_INDEX}"
_FIX = ("check --data-root (or AUTODEEPLAB_PASCAL): it must hold VOCdevkit/VOC2012/ with "
        "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/")


def read_label(path: Path) -> np.ndarray:
    """Class ids (uint8 (H, W)) of a VOC ``SegmentationClass`` PNG or an SBD ``cls`` .mat."""
    if path.suffix.lower() == ".mat":
        return apply_table(_read_mat(path), LABEL_TABLE, path, _EXPECTED)
    return apply_table(label_values(path), LABEL_TABLE, path, _EXPECTED)


def _read_mat(path: Path) -> np.ndarray:
    try:
        segmentation = scipy.io.loadmat(
            path, squeeze_me=True, struct_as_record=False
        )["GTcls"].Segmentation
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
        raise UserError(
            f"cannot read SBD annotation {path} ({type(err).__name__}: {err}); expected a "
            "MATLAB file holding GTcls.Segmentation: replace or remove it"
        ) from None
    array = np.asarray(segmentation)
    if array.ndim != 2 or array.min(initial=0) < 0 or array.max(initial=0) > 255:
        raise UserError(
            f"SBD annotation {path} holds no 8-bit 2-D GTcls.Segmentation; replace or remove it"
        )
    return array.astype(np.uint8)


def voc_folder(root: Path) -> Path:
    """``VOC2012`` under ``root`` (ROOT, ROOT/VOCdevkit or the folder itself)."""
    require_dir(root, "pascal data root", _FIX)
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise UserError(f"PASCAL VOC folder {root / 'VOCdevkit' / 'VOC2012'} does not exist; {_FIX}")


def voc_pairs(voc: Path, split: str) -> list[tuple[Path, Path]]:
    """(JPEG, SegmentationClass PNG) of the ids listed for ``split``, in list order."""
    listing = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    ids = read_ids(listing, _FIX)
    image_dir = require_dir(voc / "JPEGImages", "PASCAL VOC image folder", _FIX)
    label_dir = require_dir(voc / "SegmentationClass", "PASCAL VOC annotation folder", _FIX)
    where = str(listing)
    return [_listed_pair(image_dir / f"{i}.jpg", label_dir / f"{i}.png", where) for i in ids]


def _listed_pair(image: Path, label: Path, where: str) -> tuple[Path, Path]:
    for path in (image, label):
        require_file(path, f"file (listed in {where})", "restore it or fix the list")
    return image, label


def sbd_folder(root: Path) -> Path:
    """SBD's ``dataset`` folder: from $AUTODEEPLAB_SBD, else ROOT/benchmark_RELEASE."""
    given = os.environ.get(SBD_VARIABLE)
    base = Path(given).expanduser() if given else root / SBD_FOLDER
    fix = (f"set {SBD_VARIABLE} to the SBD folder holding dataset/img and dataset/cls "
           f"(or unpack SBD into --data-root as {SBD_FOLDER}/), or drop --use-sbd")
    require_dir(base, "SBD folder", fix)
    dataset = base / "dataset" if (base / "dataset").is_dir() else base
    for sub in ("img", "cls"):
        require_dir(dataset / sub, "SBD folder", fix)
    return dataset


def sbd_extra_pairs(sbd: Path, exclude: set[str]) -> list[tuple[Path, Path]]:
    """SBD (jpg, .mat) pairs of its train and val lists, minus ``exclude``, sorted by id."""
    fix = "restore SBD's dataset/train.txt and val.txt"
    ids = set(read_ids(sbd / "train.txt", fix)) | set(read_ids(sbd / "val.txt", fix))
    where = f"{sbd / 'train.txt'} or val.txt"
    return [
        _listed_pair(sbd / "img" / f"{i}.jpg", sbd / "cls" / f"{i}.mat", where)
        for i in sorted(ids - exclude)
    ]


def find_pairs(root: Path, split: str, use_sbd: bool = False) -> list[tuple[Path, Path]]:
    """(image, label) paths of ``split``; with ``use_sbd`` the train split gains SBD's."""
    voc = voc_folder(root)
    pairs = voc_pairs(voc, split)
    if use_sbd and split == "train":
        val_listing = voc / "ImageSets" / "Segmentation" / "val.txt"
        val_ids = set(read_ids(val_listing, f"SBD images are filtered by it; {_FIX}"))
        train_ids = {image.stem for image, _ in pairs}
        extra = sbd_extra_pairs(sbd_folder(root), val_ids | train_ids)
        log.info("pascal train: %d VOC + %d SBD images", len(pairs), len(extra))
        pairs = pairs + extra
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
    use_sbd: bool = False,
):
    """See ``dataloaders.build_dataset``."""
    pairs = find_pairs(Path(data_root).expanduser(), split, use_sbd=use_sbd)
    return pairs_dataset(
        INFO, pairs, read_label, train=train, crop_size=crop_size, resize=resize,
        scale_range=scale_range, max_samples=max_samples,
    )
