"""COCO 2017 instances as 21-class semantic segmentation: the 20 PASCAL VOC categories.

Layout of the official download under ROOT: ``annotations/instances_{train,val}2017.json``
and the images in ``train2017/`` and ``val2017/``. Masks follow the DeepLab and torchvision
segmentation references: each instance annotation of one of the 20 VOC categories (polygons,
uncompressed or compressed RLE, crowd regions included) is rasterised with pycocotools and
painted with its VOC class; pixels covered by more than one instance become IGNORE_INDEX;
everything else is background (0). Other COCO categories are background. The train split
skips images with fewer than ``MIN_FOREGROUND`` (1000) pixels of the 20 classes; val keeps
every image. COCO has no public test annotations.

The label maps are computed once per split and cached next to the annotations, as
``annotations/autodeeplab_masks_{split}2017.npz`` (PNG-compressed maps in one array), keyed
by the JSON file's size and modification time, so an edited JSON rebuilds it. The cache is
written atomically; where the annotations folder is read-only the masks are computed in
memory on every run, with a warning. With ``max_samples`` and no cache yet, only the masks of
the first N kept images are computed, and nothing is written.

Problems a user can cause (missing root, annotation file or image, unreadable JSON or
annotation, image of another size than the JSON says) raise UserError naming the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dataloaders import IGNORE_INDEX, DatasetInfo
from dataloaders.datasets import SegmentationDataset
from dataloaders.datasets.files import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    header_size,
    mask_image,
    read_rgb,
    require_dir,
    require_file,
)
from dataloaders.datasets.pascal import CLASS_NAMES
from dataloaders.datasets.pascal import INFO as VOC_INFO
from dataloaders.transforms import build_transforms
from utils.checkpoint import atomic_write
from utils.errors import UserError

log = logging.getLogger(__name__)

# Official COCO category id of each VOC class, in VOC order (index 0, background, has none):
# airplane, bicycle, bird, boat, bottle, bus, car, cat, chair, cow, dining table, dog, horse,
# motorcycle, person, potted plant, sheep, couch, train, tv.
VOC_CATEGORY_IDS = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
CATEGORY_TO_CLASS = {cat: cls for cls, cat in enumerate(VOC_CATEGORY_IDS) if cls > 0}
MIN_FOREGROUND = 1000  # pixels of the 20 classes a train image needs (as the references)
SPLIT_NAMES = {"train": "train2017", "val": "val2017"}
CACHE_VERSION = 1

INFO = DatasetInfo(
    name="coco",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    palette=VOC_INFO.palette,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
_FIX = ("check --data-root (or AUTODEEPLAB_COCO): it must hold "
        "annotations/instances_{train,val}2017.json, train2017/ and val2017/")


@dataclass
class MaskTable:
    """The kept images of a split and their label maps, PNG-encoded end to end in ``blob``."""

    file_names: np.ndarray  # (N,) str
    sizes: np.ndarray  # (N, 2) int64: height, width
    offsets: np.ndarray  # (N + 1,) int64: image i's PNG is blob[offsets[i]:offsets[i + 1]]
    blob: np.ndarray  # uint8

    def __len__(self) -> int:
        return len(self.file_names)

    def label(self, index: int) -> np.ndarray:
        """Class ids (uint8 (H, W)) of kept image ``index``."""
        data = self.blob[self.offsets[index] : self.offsets[index + 1]].tobytes()
        with Image.open(io.BytesIO(data)) as png:
            return np.asarray(png, dtype=np.uint8)

    def truncated(self, count: int) -> "MaskTable":
        count = min(count, len(self))
        return MaskTable(self.file_names[:count], self.sizes[:count],
                         self.offsets[: count + 1], self.blob[: self.offsets[count]])


def label_map(coco, image: dict) -> np.ndarray:
    """The 21-class label map (uint8 (H, W)) of one COCO image record, as the references do."""
    height, width = image["height"], image["width"]
    label = np.zeros((height, width), dtype=np.uint8)
    covered = np.zeros((height, width), dtype=np.int32)
    for ann in coco.imgToAnns.get(image["id"], ()):
        cls = CATEGORY_TO_CLASS.get(ann.get("category_id"))
        if cls is None or not ann.get("segmentation"):
            continue
        instance = coco.annToMask(ann).astype(bool)  # polygons, RLE or compressed RLE
        np.maximum(label, np.where(instance, cls, 0).astype(np.uint8), out=label)
        covered += instance
    label[covered > 1] = IGNORE_INDEX  # overlapping instances: which class is unknown
    return label


def _png(label: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(label, "L").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def compute_masks(ann_file: Path, min_foreground: int, limit: int | None = None) -> MaskTable:
    """Label maps of the images of ``ann_file`` with at least ``min_foreground`` class pixels,
    in image-id order; stop after ``limit`` kept images when given."""
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
            coco = COCO(str(ann_file))
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
        raise UserError(
            f"cannot read COCO annotations {ann_file} ({type(err).__name__}: {err}); "
            "restore the file from the COCO download"
        ) from None
    names, sizes, chunks = [], [], []
    skipped = 0
    ids = sorted(coco.imgs)
    for image_id in tqdm(ids, desc=f"COCO masks of {ann_file.name}", disable=None, leave=False):
        image = coco.imgs[image_id]
        try:
            with warnings.catch_warnings():  # pycocotools' decode predates numpy 2's copy=
                warnings.simplefilter("ignore", DeprecationWarning)
                label = label_map(coco, image)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise UserError(
                f"COCO annotations {ann_file}: image {image_id} or one of its annotations is "
                f"malformed ({type(err).__name__}: {err}); restore the file"
            ) from None
        if min_foreground and int(((label > 0) & (label != IGNORE_INDEX)).sum()) < min_foreground:
            skipped += 1
            continue
        names.append(image["file_name"])
        sizes.append((image["height"], image["width"]))
        chunks.append(np.frombuffer(_png(label), dtype=np.uint8))
        if limit is not None and len(names) == limit:
            break
    log.info("COCO %s: kept %d images, skipped %d with under %d pixels of the VOC classes",
             ann_file.name, len(names), skipped, min_foreground)
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    blob = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)
    return MaskTable(np.array(names, dtype=str), np.array(sizes, dtype=np.int64).reshape(-1, 2),
                     offsets, blob)


def cache_path(ann_file: Path, split: str) -> Path:
    """Where the label maps of ``split`` are cached: next to the annotations."""
    return ann_file.parent / f"autodeeplab_masks_{SPLIT_NAMES[split]}.npz"


def cache_key(ann_file: Path, min_foreground: int) -> np.ndarray:
    """What a cache must match: its format, the JSON's size and mtime, the filter."""
    stat = ann_file.stat()
    return np.array([CACHE_VERSION, stat.st_size, stat.st_mtime_ns, min_foreground], np.int64)


def load_cache(path: Path, key: np.ndarray) -> MaskTable | None:
    """The cached table, or None when absent, stale or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if not np.array_equal(data["key"], key):
                log.info("COCO mask cache %s is stale (the annotations changed); rebuilding",
                         path)
                return None
            return MaskTable(data["file_names"], data["sizes"], data["offsets"], data["blob"])
    except (OSError, ValueError, KeyError) as err:
        log.warning("COCO mask cache %s is unreadable (%s); rebuilding it", path, err)
        return None


def save_cache(path: Path, key: np.ndarray, table: MaskTable) -> None:
    """Write the cache atomically; a read-only folder only costs a warning."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, key=key, file_names=table.file_names, sizes=table.sizes,
                     offsets=table.offsets, blob=table.blob)

    try:
        atomic_write(path, write)
    except OSError as err:
        log.warning("cannot write the COCO mask cache %s (%s); the masks will be computed "
                    "again on every run", path, err)
    else:
        log.info("COCO masks cached in %s", path)


def mask_table(ann_file: Path, split: str, max_samples: int | None) -> MaskTable:
    """The split's label maps: from the cache, or computed (and cached when complete)."""
    min_foreground = MIN_FOREGROUND if split == "train" else 0
    path = cache_path(ann_file, split)
    key = cache_key(ann_file, min_foreground)
    table = load_cache(path, key)
    if table is None:
        if max_samples is not None:
            log.info("computing the masks of the first %d images only (--max-samples); a run "
                     "without it caches all of them in %s", max_samples, path)
            return compute_masks(ann_file, min_foreground, limit=max_samples)
        table = compute_masks(ann_file, min_foreground)
        save_cache(path, key, table)
    return table if max_samples is None else table.truncated(max_samples)


class CocoSegmentation(SegmentationDataset):
    """Images of ``image_dir`` with their label maps from ``table``."""

    def __init__(self, image_dir: Path, table: MaskTable, transform):
        super().__init__(INFO, transform)
        self.image_dir = image_dir
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def image_path(self, index: int) -> Path:
        return self.image_dir / str(self.table.file_names[index])

    def load(self, index: int):
        path = self.image_path(index)
        image = read_rgb(path)
        where = f"the COCO mask of {path.name}"
        return image, mask_image(self.table.label(index), image, where, path)


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
    if split not in SPLIT_NAMES:
        raise UserError(f"coco has no annotated '{split}' split; use train or val (--split val)")
    root = require_dir(Path(data_root).expanduser(), "coco data root", _FIX)
    ann_file = require_file(
        root / "annotations" / f"instances_{SPLIT_NAMES[split]}.json", "COCO annotation file",
        _FIX,
    )
    image_dir = require_dir(root / SPLIT_NAMES[split], "COCO image folder", _FIX)
    table = mask_table(ann_file, split, max_samples)
    if len(table) == 0:
        kept = f"has at least {MIN_FOREGROUND} pixels of the 20 VOC classes" \
            if split == "train" else "is listed"
        raise UserError(f"coco split '{split}' is empty: no image in {ann_file} {kept}; "
                        "check the annotations")
    transform = build_transforms(INFO.mean, INFO.std, train=train, crop_size=crop_size,
                                 resize=resize, scale_range=scale_range)
    dataset = CocoSegmentation(image_dir, table, transform)
    for index in range(len(dataset)):
        path = require_file(dataset.image_path(index), f"image (listed in {ann_file})", _FIX)
        height, width = (int(v) for v in table.sizes[index])
        size = header_size(path)
        if size != (width, height):
            raise UserError(
                f"image {path} is {size[0]}x{size[1]} but {ann_file.name} says "
                f"{width}x{height}; restore the image or the annotations"
            )
    return dataset
