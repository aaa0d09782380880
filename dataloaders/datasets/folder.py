"""Any segmentation dataset on disk: ``--dataset folder --data-root ROOT``.

Layout::

    ROOT/images/{train,val[,test]}/...   images, PNG or JPEG, any size, in any sub-folders
    ROOT/masks/{train,val[,test]}/...    masks, PNG, paired with the images by relative path
                                         and stem (images/train/a/b.jpg <-> masks/train/a/b.png)
    ROOT/classes.json                    optional

Masks are single-channel PNGs of class ids (0 .. N-1; the ignore index, 255 unless
classes.json says otherwise, marks pixels to leave out), or RGB label images when classes.json
gives every class a colour.

``classes.json``::

    {"classes": ["road", "car", ...]}                                   # names only
    {"classes": [{"name": "road", "color": [128, 64, 128]}, ...],       # names and colours:
     "ignore_index": 255, "ignore_color": [0, 0, 0]}                    # RGB masks accepted

Without it, the number of classes is the largest id in the train masks plus one (the ignore
index aside), counted once and cached in ``ROOT/masks/classes_counted.json`` (the log says
so); the classes are named ``class_0`` ... and coloured from a fixed palette. Either way the
names and colours go into checkpoints, predictions and TensorBoard like any dataset's.

Everything a user can get wrong is a one-line UserError naming the file and the fix: an image
without a mask or a mask without an image, a mask of another size than its image (checked
from the headers when the dataset is built), a mask value outside the classes that is not the
ignore index, an unknown colour in an RGB mask (both when an item is loaded), an empty split,
and a classes.json that does not parse or contradicts itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from dataloaders import IGNORE_INDEX, DatasetInfo
from dataloaders.datasets.files import (IMAGENET_MEAN, IMAGENET_STD, label_values,
                                        pairs_dataset, read_image, require_dir, voc_colormap)
from utils.errors import UserError

log = logging.getLogger(__name__)

NAME = "folder"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CLASSES_FILE = "classes.json"
COUNT_CACHE = "classes_counted.json"  # under ROOT/masks
_LAYOUT = "ROOT/images/SPLIT/ and ROOT/masks/SPLIT/ (README, 'Your own data')"


def _split_dirs(root: Path, split: str) -> tuple[Path, Path]:
    images = require_dir(root / "images" / split, f"split '{split}' folder",
                         f"a folder dataset holds {_LAYOUT}")
    masks = require_dir(root / "masks" / split, f"split '{split}' mask folder",
                        f"a folder dataset holds {_LAYOUT}")
    return images, masks


def find_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) paths of ``split``, paired by relative path and stem; every image needs a
    mask and every mask an image."""
    image_dir, mask_dir = _split_dirs(root, split)
    images = {p.relative_to(image_dir).with_suffix(""): p for p in sorted(image_dir.rglob("*"))
              if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    masks = {p.relative_to(mask_dir).with_suffix(""): p for p in sorted(mask_dir.rglob("*"))
             if p.suffix.lower() == ".png" and p.is_file()}
    for key, image in images.items():
        if key not in masks:
            raise UserError(f"image {image} has no mask {mask_dir / key}.png; add the mask or "
                            f"remove the image")
    for key, mask in masks.items():
        if key not in images:
            raise UserError(f"mask {mask} has no image {image_dir / key}.png or .jpg; add the "
                            f"image or remove the mask")
    if not images:
        raise UserError(f"split '{split}' is empty: no PNG or JPEG images in {image_dir}; add "
                        f"images, or leave the split out")
    return [(images[key], masks[key]) for key in sorted(images)]


def _read_classes_file(path: Path) -> dict:
    """classes.json, checked: names, optional colours, the ignore index and colour."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({err}); fix its JSON") from None
    entries = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path} needs a non-empty list \"classes\" (names, or objects with "
                        f"\"name\" and \"color\"); fix the file")
    names, colours = [], []
    for i, entry in enumerate(entries):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(f"{path}: class {i} needs a name (a string, or an object with "
                            f"\"name\"); fix the file")
        names.append(entry["name"])
        colours.append(entry.get("color"))
    if len(set(names)) != len(names):
        raise UserError(f"{path} names a class twice; give every class its own name")
    ignore = spec.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore, int) or not 0 <= ignore <= 255 or ignore < len(names):
        raise UserError(f"{path}: ignore_index must be an id from {len(names)} to 255 (after "
                        f"the classes), got {ignore!r}; fix the file")
    if len(names) > 255:
        raise UserError(f"{path} lists {len(names)} classes; masks of 8-bit ids hold at most "
                        f"255")
    given = [c for c in colours if c is not None]
    if given and len(given) != len(colours):
        raise UserError(f"{path} gives colours to some classes only; give every class a "
                        f"colour, or none")
    for colour in [*given, spec.get("ignore_color", [0, 0, 0])]:
        if not (isinstance(colour, list) and len(colour) == 3
                and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)):
            raise UserError(f"{path}: colour {colour!r} is not [R, G, B] of 0..255; fix the "
                            f"file")
    if len({tuple(c) for c in given}) != len(given):
        raise UserError(f"{path} gives two classes the same colour; colours must differ")
    return {"names": names, "colours": [tuple(c) for c in given] or None, "ignore": ignore,
            "ignore_colour": tuple(spec["ignore_color"]) if "ignore_color" in spec else None}


def _count_classes(root: Path) -> int:
    """Classes counted from the train masks (largest id + 1, 255 aside), cached next to them."""
    cache = root / "masks" / COUNT_CACHE
    masks = sorted(p for p in _split_dirs(root, "train")[1].rglob("*.png"))
    stamp = [len(masks), max((p.stat().st_mtime_ns for p in masks), default=0)]
    if cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("stamp") == stamp:
                return int(saved["num_classes"])
        except (OSError, ValueError, KeyError):
            pass  # counted again below and rewritten
    largest = -1
    for path in masks:
        values = np.unique(label_values(path))
        values = values[values != IGNORE_INDEX]
        if values.size:
            largest = max(largest, int(values.max()))
    if largest < 0:
        raise UserError(f"the train masks under {root / 'masks' / 'train'} hold no class ids "
                        f"(only {IGNORE_INDEX}, the ignore index); check the masks")
    cache.write_text(json.dumps({"num_classes": largest + 1, "stamp": stamp}) + "\n")
    log.info("folder dataset %s: %d classes counted from %d train masks (largest id %d); "
             "cached in %s (give %s to name them)", root, largest + 1, len(masks), largest,
             cache, root / CLASSES_FILE)
    return largest + 1


def classes(root: Path) -> dict:
    """The dataset's classes: from ROOT/classes.json, else counted from the train masks."""
    path = root / CLASSES_FILE
    if path.is_file():
        return _read_classes_file(path)
    count = _count_classes(root)
    return {"names": [f"class_{i}" for i in range(count)], "colours": None,
            "ignore": IGNORE_INDEX, "ignore_colour": None}


def info(root: Path, spec: dict | None = None) -> DatasetInfo:
    """Class names, palette and normalisation of the folder dataset at ``root`` (its
    `classes`, read again unless given)."""
    spec = spec or classes(root)
    palette = spec["colours"] or voc_colormap(len(spec["names"]) + 1)[1:]
    return DatasetInfo(name=NAME, num_classes=len(spec["names"]),
                       class_names=tuple(spec["names"]), palette=tuple(palette),
                       mean=IMAGENET_MEAN, std=IMAGENET_STD)


class MaskReader:
    """Class ids of one mask file: ids checked against the classes, RGB masks mapped through
    the classes' colours. A module-level class, so that DataLoader workers can unpickle it."""

    def __init__(self, spec: dict):
        self.num_classes = len(spec["names"])
        self.ignore = spec["ignore"]
        self.colours = spec["colours"]
        self.ignore_colour = spec["ignore_colour"]

    def __call__(self, path: Path) -> np.ndarray:
        raw = np.asarray(read_image(path))
        if raw.ndim == 3 and self.colours is not None and not _grey(raw):
            return self._from_colours(raw[..., :3], path)
        ids = label_values(path)
        bad = (ids >= self.num_classes) & (ids != self.ignore)
        if bad.any():
            values = np.unique(ids[bad])[:5].tolist()
            raise UserError(f"mask {path} holds ids {values}, outside the {self.num_classes} "
                            f"classes 0..{self.num_classes - 1} and not the ignore index "
                            f"{self.ignore}; fix the mask or the classes")
        ids = ids.copy()
        ids[ids == self.ignore] = IGNORE_INDEX
        return ids

    def _from_colours(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) \
            | rgb[..., 2]
        ids = np.full(code.shape, -1, dtype=np.int16)
        for class_id, (r, g, b) in enumerate(self.colours):
            ids[code == (r << 16 | g << 8 | b)] = class_id
        if self.ignore_colour is not None:
            r, g, b = self.ignore_colour
            ids[code == (r << 16 | g << 8 | b)] = IGNORE_INDEX
        if (ids < 0).any():
            unknown = np.unique(code[ids < 0])[:3]
            colours = [[int(c >> 16), int(c >> 8 & 255), int(c & 255)] for c in unknown]
            raise UserError(f"mask {path} holds colours {colours} that classes.json gives no "
                            f"class; add them to classes.json (or as ignore_color) or fix the "
                            f"mask")
        return ids.astype(np.uint8)


def _grey(rgb: np.ndarray) -> bool:
    """An RGB-stored mask whose channels are equal: class ids, not colours."""
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def build(split, *, data_root, train, crop_size, resize, scale_range, max_samples):
    """See ``dataloaders.build_dataset``."""
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"folder dataset root {root} does not exist; give --data-root the "
                        f"folder holding {_LAYOUT}")
    spec = classes(root)
    return pairs_dataset(info(root, spec), find_pairs(root, split), MaskReader(spec), train=train,
                         crop_size=crop_size, resize=resize, scale_range=scale_range,
                         max_samples=max_samples)
