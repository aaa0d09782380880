"""Tiny dataset trees in the exact download layouts, in real file formats, for the tests.

Each ``make_*`` writes a few small images and labels under ``root`` and returns what the tests
check against: the label pixels it planted (raw value -> expected class id) and the counts.
Images are 48 x 64 (Cityscapes 48 x 96, its 1:2 aspect) unless told otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils

from dataloaders.datasets.files import voc_colormap

SIZE = (48, 64)  # height, width


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(list(key))


def write_image(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Save ``array`` (uint8) with PIL in the format of the suffix (PNG or JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode).save(path)
    return path


def random_rgb(rng: np.random.Generator, size=SIZE) -> np.ndarray:
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def blocky_labels(rng: np.random.Generator, values, size=SIZE, block=8) -> np.ndarray:
    """A label map of ``block`` x ``block`` squares drawn from ``values``."""
    h, w = size
    coarse = rng.choice(np.asarray(values), ((h + block - 1) // block, (w + block - 1) // block))
    return np.kron(coarse, np.ones((block, block), dtype=coarse.dtype))[:h, :w].astype(np.uint8)


# ---------------------------------------------------------------- Cityscapes

CITYSCAPES_SIZE = (48, 96)
CITYSCAPES_SPLITS = {"train": {"aachen": 2, "bochum": 2}, "val": {"frankfurt": 2}}
# labelIds planted in every label image: the 19 classes' ids, void ids and a rare class.
CITYSCAPES_LABEL_IDS = (0, 1, 4, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                        29, 31, 32, 33)


def make_cityscapes(root: Path, splits=CITYSCAPES_SPLITS) -> Path:
    """``leftImg8bit/{split}/<city>/*_leftImg8bit.png`` and ``gtFine/.../*_labelIds.png``.

    Pixel (0, 0) of every label is labelId 7 (road), pixel (0, 1) labelId 0 (unlabeled).
    """
    for split, cities in splits.items():
        for city, count in cities.items():
            for frame in range(count):
                stem = f"{city}_{frame:06d}_000019"
                rng = _rng(len(city), frame, len(split))
                write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                            random_rgb(rng, CITYSCAPES_SIZE))
                labels = blocky_labels(rng, CITYSCAPES_LABEL_IDS, CITYSCAPES_SIZE)
                labels[0, 0], labels[0, 1] = 7, 0
                write_image(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                            labels, "L")
                # The other files of the official archive, which must be ignored.
                write_image(root / "gtFine" / split / city / f"{stem}_gtFine_color.png",
                            random_rgb(rng, CITYSCAPES_SIZE))
    return root


# ---------------------------------------------------------------- PASCAL VOC and SBD

VOC_TRAIN = ("2007_000032", "2007_000039", "2008_000008", "2008_000015")
VOC_VAL = ("2007_000033", "2007_000042")
# SBD holds some VOC train and val images too: only the last two are new.
SBD_TRAIN = ("2007_000032", "2007_000033", "2009_000100")
SBD_VAL = ("2007_000039", "2009_000200")
SBD_NEW = ("2009_000100", "2009_000200")


def _voc_labels(rng: np.random.Generator, size=SIZE) -> np.ndarray:
    labels = blocky_labels(rng, range(21), size)
    labels[0, :] = 255  # the border-like ignore pixels of SegmentationClass
    labels[1, 0] = 15  # person
    return labels


def make_pascal(root: Path, sbd: bool = False) -> Path:
    """``VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}``; with
    ``sbd``, also ``benchmark_RELEASE/dataset/{img,cls,train.txt,val.txt}``.

    VOC labels are palette PNGs with row 0 at 255 and pixel (1, 0) = 15; SBD labels are
    ``GTcls.Segmentation`` structs with pixel (1, 0) = 20.
    """
    voc = root / "VOCdevkit" / "VOC2012"
    palette = [c for colour in voc_colormap(256) for c in colour]
    lists = voc / "ImageSets" / "Segmentation"
    for folder in (lists, voc / "SegmentationClass"):
        folder.mkdir(parents=True, exist_ok=True)
    for split, ids in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for n, image_id in enumerate(ids):
            rng = _rng(1, n, len(split))
            write_image(voc / "JPEGImages" / f"{image_id}.jpg", random_rgb(rng))
            label = Image.fromarray(_voc_labels(rng), "P")
            label.putpalette(palette)
            label.save(voc / "SegmentationClass" / f"{image_id}.png")
    (lists / "trainval.txt").write_text("".join(f"{i}\n" for i in VOC_TRAIN + VOC_VAL))
    if sbd:
        dataset = root / "benchmark_RELEASE" / "dataset"
        (dataset / "cls").mkdir(parents=True, exist_ok=True)
        (dataset / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
        (dataset / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))
        for n, image_id in enumerate(sorted(set(SBD_TRAIN + SBD_VAL))):
            rng = _rng(2, n)
            write_image(dataset / "img" / f"{image_id}.jpg", random_rgb(rng))
            segmentation = blocky_labels(rng, range(21))
            segmentation[1, 0] = 20  # tvmonitor
            boundaries = np.zeros(SIZE, dtype=np.uint8)
            scipy.io.savemat(dataset / "cls" / f"{image_id}.mat", {"GTcls": {
                "Segmentation": segmentation, "Boundaries": boundaries,
                "CategoriesPresent": np.unique(segmentation)}})
    return root


# ---------------------------------------------------------------- COCO

COCO_CATEGORIES = ((1, "person"), (3, "car"), (8, "truck"), (18, "dog"), (62, "chair"))


def _polygon_box(y0, x0, y1, x1) -> list[float]:
    """A rectangle as a COCO polygon (x, y pairs) covering pixels [y0, y1) x [x0, x1)."""
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def _box_mask(y0, x0, y1, x1, size=SIZE) -> np.ndarray:
    mask = np.zeros(size, dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major pixels, starting with 0s."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def make_coco(root: Path) -> dict:
    """``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/*.jpg``.

    Train images 1..6: 1 a dog polygon (rows 4-36, cols 4-44) overlapping a car polygon
    (rows 30-46, cols 30-60); 2 a person as uncompressed crowd RLE; 3 a small chair (skipped:
    under 1000 pixels); 4 a compressed-RLE chair; 5 a truck only (not VOC: skipped); 6 a
    two-part person polygon. Val images 7, 8: a dog; nothing. Returns the kept train ids.
    """
    h, w = SIZE
    box = _polygon_box
    train = {  # image id -> [(category id, segmentation, iscrowd)]
        1: [(18, [box(4, 4, 36, 44)], 0), (3, [box(30, 30, 46, 60)], 0)],
        2: [(1, _uncompressed_rle(_box_mask(8, 8, 44, 56)), 1)],
        3: [(62, [box(10, 10, 20, 20)], 0)],
        4: [(62, _compressed_rle(_box_mask(0, 0, 40, 40)), 0)],
        5: [(8, [box(0, 0, 48, 64)], 0)],
        6: [(1, [box(0, 0, 30, 30), box(32, 34, 46, 62)], 0)],
    }
    val = {7: [(18, [box(5, 5, 40, 50)], 0)], 8: []}
    ann_id = 100
    for split, table in (("train2017", train), ("val2017", val)):
        images, annotations = [], []
        for image_id, anns in table.items():
            name = f"{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
            write_image(root / split / name, random_rgb(_rng(3, image_id)))
            for category, segmentation, crowd in anns:
                ann_id += 1
                annotations.append({"id": ann_id, "image_id": image_id,
                                    "category_id": category, "segmentation": segmentation,
                                    "iscrowd": crowd, "area": 0.0, "bbox": [0, 0, 1, 1]})
        document = {"images": images, "annotations": annotations,
                    "categories": [{"id": i, "name": n} for i, n in COCO_CATEGORIES]}
        path = root / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
    return {"kept_train_ids": (1, 2, 4, 6)}


# ---------------------------------------------------------------- ADE20K

ADE_SPLITS = {"training": 4, "validation": 2}


def make_ade20k(root: Path) -> Path:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}``.

    Label pixels (0, 0), (0, 1), (0, 2) hold 0 (other), 1 (wall) and 150 (flag).
    """
    base = root / "ADEChallengeData2016"
    for folder, count in ADE_SPLITS.items():
        prefix = "train" if folder == "training" else "val"
        for n in range(count):
            stem = f"ADE_{prefix}_{n + 1:08d}"
            rng = _rng(4, n, len(folder))
            write_image(base / "images" / folder / f"{stem}.jpg", random_rgb(rng))
            labels = blocky_labels(rng, range(151))
            labels[0, :3] = (0, 1, 150)
            write_image(base / "annotations" / folder / f"{stem}.png", labels, "L")
    return root
