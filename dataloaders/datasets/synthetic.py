"""A synthetic segmentation problem made on the fly: no files, deterministic per (seed, index).

Scenes are drawn on a smooth background (a random near-grey linear gradient) and finished with
Gaussian pixel noise. No single cue separates the classes; colour, texture, shape and context
at more than one scale are all needed:

| id | name | what it is | told apart by |
|---|---|---|---|
| 0 | background | the gradient, plus yellow *decoy* blobs lying alone on it | context (vs 5) |
| 1 | flat_region | a large teal disk or rectangle, flat colour | texture (vs 2) |
| 2 | striped_region | same mean teal as 1, striped (random angle, period) | texture |
| 3 | orange_square | a medium axis-aligned square, orange | colour (vs 4) |
| 4 | violet_square | a medium square of the same sizes, violet | colour (vs 3) |
| 5 | inner_blob | a small yellow disk inside a large region (1 or 2), like a decoy | context |

Sizes scale with the shorter image side ``s``: large regions have radius 0.18 s .. 0.32 s,
squares side 0.10 s .. 0.20 s, blobs radius 0.03 s .. 0.05 s (at least 2 pixels). Squares may
occlude regions; blobs never touch an edge of what surrounds them. Each object's colour is
jittered, so colour is a distribution rather than a constant.

The content of item ``index`` depends only on (seed, split, index) through a local numpy
Generator; augmentation (train) is applied afterwards with torch's RNG like any dataset.
"""

from __future__ import annotations


import numpy as np

from dataloaders import DatasetInfo
from dataloaders.datasets.generated import GeneratedDefaults

BACKGROUND, FLAT_REGION, STRIPED_REGION, ORANGE_SQUARE, VIOLET_SQUARE, INNER_BLOB = range(6)

# Mean and std measured over 1024 generated 96 x 96 images (seed 0, train). The mean is
# rounded to a whole 8-bit value so that padding with the mean colour normalises to exactly 0.
INFO = DatasetInfo(
    name="synthetic",
    num_classes=6,
    class_names=(
        "background",
        "flat_region",
        "striped_region",
        "orange_square",
        "violet_square",
        "inner_blob",
    ),
    palette=(
        (0, 0, 0),
        (0, 160, 150),
        (120, 230, 220),
        (240, 130, 30),
        (140, 70, 210),
        (250, 230, 40),
    ),
    mean=(103 / 255, 131 / 255, 127 / 255),
    std=(0.208, 0.157, 0.158),
)

DEFAULTS = GeneratedDefaults(num_samples={"train": 64, "val": 16, "test": 16},
                             image_size=(96, 96))

# Base colours (RGB). Flat and striped regions share TEAL: stripes go +/- STRIPE_AMPLITUDE
# around it, so their mean colour is the same and only the texture differs.
TEAL = (40, 160, 150)
STRIPE_AMPLITUDE = 45
ORANGE = (225, 120, 35)
VIOLET = (130, 70, 200)
YELLOW = (235, 215, 50)
COLOUR_JITTER = 10  # per-object std of each channel
PIXEL_NOISE = 6  # per-pixel std
BLOB_MARGIN = 2  # pixels of surround a blob needs to be "inside" (inner) or "alone" (decoy)
PLACEMENT_TRIES = 20


def _jitter(rng: np.random.Generator, colour) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) + rng.normal(0, COLOUR_JITTER, 3).astype(
        np.float32
    )


def _disk(yy, xx, cy, cx, r) -> np.ndarray:
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _box(yy, xx, cy, cx, half_h, half_w) -> np.ndarray:
    return (np.abs(yy - cy) <= half_h) & (np.abs(xx - cx) <= half_w)


def generate(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: uint8 image (H, W, 3) and uint8 mask (H, W) of class ids 0..5."""
    s = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    # Background: a linear ramp between two near-grey colours at a random angle.
    grey = rng.uniform(50, 190, size=2)[:, None] + rng.uniform(-20, 20, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    image = grey[0] + (grey[1] - grey[0]) * ramp[..., None]
    mask = np.full((height, width), BACKGROUND, dtype=np.uint8)

    # Large regions (the coarse scale): flat or striped teal, disk or rectangle.
    for _ in range(rng.integers(1, 3)):
        r = rng.uniform(0.18, 0.32) * s
        cy, cx = rng.uniform(0.15 * height, 0.85 * height), rng.uniform(0.15 * width, 0.85 * width)
        if rng.random() < 0.5:
            region = _disk(yy, xx, cy, cx, r)
        else:
            aspect = rng.uniform(0.7, 1.4)
            region = _box(yy, xx, cy, cx, r * aspect, r / aspect)
        colour = _jitter(rng, TEAL)
        if rng.random() < 0.5:
            mask[region] = FLAT_REGION
            image[region] = colour
        else:
            period = rng.uniform(4, 8)
            theta = rng.uniform(0, np.pi)
            phase = (np.cos(theta) * xx + np.sin(theta) * yy) / period + rng.random()
            stripes = np.where(np.floor(phase * 2) % 2 == 0, 1.0, -1.0)[..., None]
            mask[region] = STRIPED_REGION
            image[region] = (colour + STRIPE_AMPLITUDE * stripes)[region]

    # Squares (the middle scale): same shape, two colours.
    for _ in range(rng.integers(1, 4)):
        half = rng.uniform(0.05, 0.10) * s
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        square = _box(yy, xx, cy, cx, half, half)
        label, base = (ORANGE_SQUARE, ORANGE) if rng.random() < 0.5 else (VIOLET_SQUARE, VIOLET)
        mask[square] = label
        image[square] = _jitter(rng, base)

    # Small blobs (the fine scale): one look, two labels decided by what surrounds them.
    def place_blob(allowed: np.ndarray) -> np.ndarray | None:
        """Paint a yellow blob whose whole surround is `allowed`; return its pixels."""
        r = max(2.0, rng.uniform(0.03, 0.05) * s)
        candidates = np.argwhere(allowed)
        for _ in range(PLACEMENT_TRIES if len(candidates) else 0):
            cy, cx = candidates[rng.integers(len(candidates))]
            if r + BLOB_MARGIN > min(cy, cx, height - 1 - cy, width - 1 - cx):
                continue  # its context would be cut off by the image border
            surround = _disk(yy, xx, cy, cx, r + BLOB_MARGIN)
            if allowed[surround].all():
                blob = _disk(yy, xx, cy, cx, r)
                image[blob] = _jitter(rng, YELLOW)
                return blob
        return None

    for _ in range(rng.integers(1, 3)):
        blob = place_blob(np.isin(mask, (FLAT_REGION, STRIPED_REGION)))
        if blob is not None:
            mask[blob] = INNER_BLOB
    free = mask == BACKGROUND
    for _ in range(rng.integers(1, 3)):
        blob = place_blob(free)  # a decoy: labelled background, looks exactly like an inner blob
        if blob is not None:
            free &= ~blob

    image = image + rng.normal(0, PIXEL_NOISE, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask
