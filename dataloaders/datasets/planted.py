"""Planted tasks: generated scenes whose labels need one architectural choice by construction,
so that a search can be checked against a known answer (bench/planted.py, tests/test_planted.py).

**planted_context** (`ring_scene`, 128 x 128). One noisy grey texture, the same inside and
outside a few thin rings. A ring is red or blue, and everything it encloses (the ring and its
interior) is labelled by that colour:

| id | name | what it is |
|---|---|---|
| 0 | background | texture outside every ring |
| 1 | inside_red | a red ring and the texture it encloses |
| 2 | inside_blue | a blue ring and the texture it encloses |

Inside and outside look exactly alike, so a pixel's class is decided only by a ring up to a
radius (23-44 pixels) away: 6-11 feature pixels at stride 4, beyond the reach of a few
operations, and 1-3 at stride 16 or 32. Several rings of both colours share an image, so the
global mean (ASPP image pooling) cannot tell either. The answer planted is a network path
that reaches the coarse levels.

**planted_operation** (`blob_scene`, 64 x 64). Small faint disks (radius 4-8 pixels), 24
grey levels brighter or darker than the background, under per-pixel noise of twice that:

| id | name | what it is |
|---|---|---|
| 0 | background | noise around the level of the image |
| 1 | bright_blob | a disk 24 levels brighter |
| 2 | dark_blob | a disk 24 levels darker |

One pixel says little (signal-to-noise 1/2); the mean over a disk's area does. The
disks are smaller than a stride-16 feature pixel, so the labels need the fine levels, and
what they need there is a local mean over about 3 x 3 feature pixels at stride 4 (12 x 12
pixels), which is exactly avg_pool_3x3. A convolution can learn to average too, but has to
learn it; skip_connect and max_pool_3x3 pass the noise on. The answer planted is a cell whose
most frequent operation is avg_pool_3x3.

That reasoning was refuted by retraining fixed architectures (docs/search_learning/README.md,
"Controls"): the stem's two 3x3 convolutions already average over 7 x 7 pixels, and a cell of
skip_connect beats one of avg_pool_3x3 by 0.3 val mIoU. The task plants nothing a cell search
should find; it is kept, with its original answer rule, as the other tasks' control.

**planted_sparks** (`spark_scene`, 96 x 96). The rings' grey texture with two to four small
sparks (4 x 4 pixels), red or blue; every pixel within 24 pixels of a spark (Chebyshev
distance: a 52 x 52 square) takes the spark's colour:

| id | name | what it is |
|---|---|---|
| 0 | background | texture far from every spark |
| 1 | near_red | texture within 24 pixels of a red spark |
| 2 | near_blue | texture within 24 pixels of a blue spark |

A label is the maximum of the sparks' colours over a window: what max_pool_3x3 computes, one
feature pixel more per operation. A spark fills about one feature pixel at stride 4, and the
stem reaches 5 pixels, so a spark must be carried over about 5 feature pixels at stride 4
before the head. An average spreads it too but thins it; a convolution has to learn to;
skip_connect does not spread; and a single feature pixel at stride 4 is easily lost on the
way to a coarser level (FactorizedReduce keeps every other pixel). The answer planted is a cell
whose most frequent operation is max_pool_3x3. Retrained controls agree that max_pool_3x3 is
what the task rewards most and most reliably, without excluding the others: max_pool_3x3
cells score highest in every seed, other cells less and from seed to seed very differently.

The sparks were 2 x 2 pixels until 2026-12-01. Then only a max_pool_3x3 cell learnt the task
at all, but most supernets never left chance within the search's budget, whatever their
settings, so their architecture parameters moved on noise. Both versions' measurements are in
docs/search_learning/README.md.

Scenes are drawn at one scale: training augmentation keeps the random crop and flip but not
the random rescale, which would change the sizes and distances the tasks are built on.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from dataloaders import DatasetInfo
from dataloaders.datasets.generated import GeneratedDefaults

BACKGROUND, INSIDE_RED, INSIDE_BLUE = range(3)
RING_CLASS_NAMES = ("background", "inside_red", "inside_blue")
RING_PALETTE = ((0, 0, 0), (220, 50, 50), (50, 90, 230))
# Means and stds measured over 256 generated images of the default size (seed 0, train); the
# mean is rounded to a whole 8-bit value so that padding with the mean colour normalises to 0.
RING_MEAN = (125 / 255, 121 / 255, 126 / 255)
RING_STD = (0.158, 0.146, 0.162)

RING_COLOURS = {INSIDE_RED: (215, 45, 45), INSIDE_BLUE: (45, 85, 225)}
RING_WIDTH = 2.5  # pixels
TEXTURE_STD = 28  # per-pixel grey noise, the same everywhere
COLOUR_JITTER = 12
PLACEMENT_TRIES = 50


def info(name: str, class_names, palette, mean, std) -> DatasetInfo:
    return DatasetInfo(name=name, num_classes=len(class_names), class_names=tuple(class_names),
                       palette=tuple(palette), mean=tuple(mean), std=tuple(std))


def defaults(image_size: tuple[int, int]) -> GeneratedDefaults:
    """Every planted task's split sizes, at `image_size`, drawn at one scale (see above)."""
    return GeneratedDefaults(num_samples={"train": 128, "val": 16, "test": 16},
                             image_size=image_size, scale_range=(1.0, 1.0))


def operation_answer(operation: str) -> str:
    """The planted answer of a task that plants `operation` (checked by `operation_wins`)."""
    return f"{operation} is the decoded cell's most frequent operation"


BRIGHT_BLOB, DARK_BLOB = 1, 2
BLOB_CLASS_NAMES = ("background", "bright_blob", "dark_blob")
BLOB_PALETTE = ((0, 0, 0), (250, 250, 250), (120, 60, 200))
BLOB_MEAN = (128 / 255,) * 3
BLOB_STD = (0.192,) * 3
BLOB_CONTRAST = 24  # grey levels above or below the background
BLOB_NOISE = 48  # per-pixel grey noise std: twice the contrast
BLOB_RADIUS = (4.0, 8.0)  # pixels
BLOBS_PER_IMAGE = (8, 16)


def blob_scene(rng: np.random.Generator, height: int, width: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """One scene of the operation task: uint8 image (H, W, 3) and uint8 mask (H, W) of class
    ids 0..2, faint bright and dark disks in grey noise of twice their contrast."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    level = np.full((height, width), rng.uniform(118, 138), dtype=np.float32)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(BLOBS_PER_IMAGE[0], BLOBS_PER_IMAGE[1] + 1)):
        r = rng.uniform(*BLOB_RADIUS)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if (mask[disk] != 0).any():
            continue  # blobs never touch, so each keeps its one contrast
        label = BRIGHT_BLOB if rng.random() < 0.5 else DARK_BLOB
        mask[disk] = label
        level[disk] += BLOB_CONTRAST if label == BRIGHT_BLOB else -BLOB_CONTRAST
    image = level[..., None] + rng.normal(0, BLOB_NOISE, (height, width, 1)) + np.zeros(3)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


NEAR_RED, NEAR_BLUE = 1, 2
SPARK_CLASS_NAMES = ("background", "near_red", "near_blue")
SPARK_PALETTE = RING_PALETTE
# The rings' grey texture, so their statistics (the sparks' own, over 256 images: mean 0.490,
# std 0.136 per channel).
SPARK_MEAN, SPARK_STD = RING_MEAN, RING_STD
SPARK_COLOURS = {NEAR_RED: (235, 40, 40), NEAR_BLUE: (40, 80, 235)}
SPARK_SIZE = 4  # pixels, square (2 until 2026-12-01; see the module docstring)
SPARK_REACH = 24  # pixels: a pixel is near a spark within this Chebyshev distance
SPARKS_PER_IMAGE = (2, 4)


def spark_scene(rng: np.random.Generator, height: int, width: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """One scene of the sparks task: uint8 image (H, W, 3) and uint8 mask (H, W) of class ids
    0..2, tiny red and blue sparks in grey noise, each labelling the square of pixels within
    SPARK_REACH of it by its colour. Squares never overlap."""
    grey = rng.uniform(90, 160)
    image = grey + rng.normal(0, 4, 3) + rng.normal(0, TEXTURE_STD, (height, width, 1))
    mask = np.full((height, width), BACKGROUND, dtype=np.uint8)
    placed: list[tuple[int, int]] = []
    for _ in range(rng.integers(SPARKS_PER_IMAGE[0], SPARKS_PER_IMAGE[1] + 1)):
        for _ in range(PLACEMENT_TRIES):
            y = rng.integers(0, height - SPARK_SIZE + 1)
            x = rng.integers(0, width - SPARK_SIZE + 1)
            if all(max(abs(y - q), abs(x - p)) > 2 * SPARK_REACH + SPARK_SIZE
                   for q, p in placed):
                break
        else:
            continue
        placed.append((y, x))
        label = NEAR_RED if rng.random() < 0.5 else NEAR_BLUE
        mask[max(0, y - SPARK_REACH):y + SPARK_SIZE + SPARK_REACH,
             max(0, x - SPARK_REACH):x + SPARK_SIZE + SPARK_REACH] = label
        image[y:y + SPARK_SIZE, x:x + SPARK_SIZE] = (
            np.asarray(SPARK_COLOURS[label], np.float32) + rng.normal(0, COLOUR_JITTER, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def ring_scene(rng: np.random.Generator, height: int, width: int, *,
               radius_range: tuple[float, float], rings: tuple[int, int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """One scene: uint8 image (H, W, 3) and uint8 mask (H, W) of class ids 0..2.

    `radius_range` is a fraction of the shorter side; `rings` (min, max) rings are tried, each
    of a random colour, placed whole and apart (a ring with no room left is skipped)."""
    s = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grey = rng.uniform(90, 160)
    tint = rng.normal(0, 4, 3)  # a slightly coloured grey, one per image
    image = grey + tint + rng.normal(0, TEXTURE_STD, (height, width, 1))  # (H, W, 3)
    mask = np.full((height, width), BACKGROUND, dtype=np.uint8)
    placed: list[tuple[float, float, float]] = []
    for _ in range(rng.integers(rings[0], rings[1] + 1)):
        r = rng.uniform(*radius_range) * s
        if 2 * r + 2 > s:
            continue
        for _ in range(PLACEMENT_TRIES):
            cy, cx = rng.uniform(r + 1, height - 1 - r), rng.uniform(r + 1, width - 1 - r)
            if all(np.hypot(cy - y, cx - x) > r + q + 3 for y, x, q in placed):
                break
        else:
            continue  # no room left for this ring
        placed.append((cy, cx, r))
        label = INSIDE_RED if rng.random() < 0.5 else INSIDE_BLUE
        distance = np.hypot(yy - cy, xx - cx)
        mask[distance <= r] = label
        ring = np.abs(distance - (r - RING_WIDTH / 2)) <= RING_WIDTH / 2
        colour = np.asarray(RING_COLOURS[label], np.float32) + rng.normal(0, COLOUR_JITTER, 3)
        image[ring] = colour + rng.normal(0, TEXTURE_STD / 4, (int(ring.sum()), 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def operation_wins(cell, operation: str) -> bool:
    """Whether `operation` is on more of a decoded cell's edges (per block two (input,
    operation) pairs) than any other operation; a tie is not a win."""
    counts = Counter(op for block in cell for _, op in block)
    ours = counts.pop(operation, 0)
    return ours > max(counts.values(), default=0)


def uniform_cell(operation: str, steps: int = 5, shallow: bool = False) -> tuple:
    """A cell with `operation` on every edge: the cell of the control architectures, whose
    network path or operation is fixed by hand. Block b reads the two latest states (b, b + 1),
    a chain as deep as the cell has blocks, or with `shallow` the cell's two inputs (0, 1)."""
    return tuple(((0, operation), (1, operation)) if shallow
                 else ((b, operation), (b + 1, operation)) for b in range(steps))
