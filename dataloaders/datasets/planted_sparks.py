"""Planted task "sparks": small red and blue squares in grey noise, each labelling the square
around it by its colour, built so that max_pool_3x3 at the fine levels serves it best. See
dataloaders/datasets/planted.py for the scenes and the reasoning; retrained controls confirm
it (docs/search_learning/README.md, "Controls")."""

from __future__ import annotations

from dataloaders.datasets import planted

INFO = planted.info("planted_sparks", planted.SPARK_CLASS_NAMES, planted.SPARK_PALETTE,
                    planted.SPARK_MEAN, planted.SPARK_STD)
DEFAULTS = planted.defaults((96, 96))
generate = planted.spark_scene

PLANTED_OPERATION = "max_pool_3x3"
PLANTED_ANSWER = planted.operation_answer(PLANTED_OPERATION)
FINE_PATH = (0,) * 8
# Fixed architectures retrained to check that the task needs what it plants, whatever the
# search does: (network path, cell) by name. The planted operation and skip_connect with the
# blocks chained; four operations with every block reading the cell's two inputs ("shallow",
# so that a pooling cell widens its input by one pixel per layer, not five); and a skip_connect
# path to stride 16, in case going coarse did the spreading instead.
CONTROLS = {
    **{op: (FINE_PATH, planted.uniform_cell(op)) for op in (PLANTED_OPERATION, "skip_connect")},
    **{f"{op}, shallow cell": (FINE_PATH, planted.uniform_cell(op, shallow=True))
       for op in (PLANTED_OPERATION, "avg_pool_3x3", "sep_conv_3x3", "atrous_conv_5x5")},
    "skip_connect, path to stride 16": ((0, 1, 2, 2, 2, 2, 2, 2),
                                        planted.uniform_cell("skip_connect")),
}


def planted_answer_found(network_path, cell) -> bool:
    """Whether a decoded architecture (levels per layer; per block two (input, operation)
    pairs) holds the planted answer: PLANTED_OPERATION on more of the cell's edges than any
    other operation (a tie is not found)."""
    return planted.operation_wins(cell, PLANTED_OPERATION)
