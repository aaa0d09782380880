"""Planted task "context": large rings, whose interiors need a path through the coarse levels.
See dataloaders/datasets/planted.py for the scenes and the reasoning."""

from __future__ import annotations

from functools import partial

from dataloaders.datasets import planted

INFO = planted.info("planted_context", planted.RING_CLASS_NAMES, planted.RING_PALETTE,
                    planted.RING_MEAN, planted.RING_STD)
DEFAULTS = planted.defaults((128, 128))
generate = partial(planted.ring_scene, radius_range=(0.18, 0.34), rings=(2, 4))

COARSE_LEVEL = 2  # stride 16
PLANTED_ANSWER = "the decoded path reaches stride 16 or 32"
# Fixed architectures retrained to check that the task needs what it plants, whatever the
# search does: (network path, cell) by name. Paths that stay fine or go coarse, each with two
# cells: sep_conv_3x3 on every edge, and skip_connect on every edge (the best uniform cell of
# the operation task's controls at this budget; docs/search_learning/planted_controls.csv).
PATHS = {"fine path (stride 4)": (0,) * 8, "stride 16": (0, 1, 2, 2, 2, 2, 2, 2),
         "stride 32": (0, 1, 2, 3, 3, 3, 3, 3)}
CONTROLS = {
    **{name: (path, planted.uniform_cell("sep_conv_3x3")) for name, path in PATHS.items()},
    **{f"{name}, skip cell": (path, planted.uniform_cell("skip_connect"))
       for name, path in PATHS.items()},
}


def planted_answer_found(network_path, cell) -> bool:
    """Whether a decoded architecture (levels per layer; per block two (input, operation)
    pairs) holds the planted answer: a path that reaches level COARSE_LEVEL or coarser."""
    return max(network_path) >= COARSE_LEVEL
