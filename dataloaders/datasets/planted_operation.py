"""Planted task "operation": faint small disks in strong noise, built to need a local mean at
the fine levels (avg_pool_3x3); its controls show that a skip_connect cell serves it better.
See dataloaders/datasets/planted.py for the scenes, the reasoning and its refutation."""

from __future__ import annotations

from dataloaders.datasets import planted

INFO = planted.info("planted_operation", planted.BLOB_CLASS_NAMES, planted.BLOB_PALETTE,
                    planted.BLOB_MEAN, planted.BLOB_STD)
DEFAULTS = planted.defaults((64, 64))
generate = planted.blob_scene

PLANTED_OPERATION = "avg_pool_3x3"
PLANTED_ANSWER = planted.operation_answer(PLANTED_OPERATION)
# Fixed architectures retrained to check that the task needs what it plants, whatever the
# search does: (network path, cell) by name; one fine path, one operation on every edge, the
# blocks chained (as deep as the cell) or all reading the cell's two inputs ("shallow").
CONTROLS = {
    **{op: ((0,) * 8, planted.uniform_cell(op))
       for op in (PLANTED_OPERATION, "skip_connect", "sep_conv_3x3")},
    **{f"{op}, shallow cell": ((0,) * 8, planted.uniform_cell(op, shallow=True))
       for op in (PLANTED_OPERATION, "skip_connect", "sep_conv_3x3", "atrous_conv_5x5")},
}


def planted_answer_found(network_path, cell) -> bool:
    """Whether a decoded architecture (levels per layer; per block two (input, operation)
    pairs) holds the planted answer: PLANTED_OPERATION on more of the cell's edges than any
    other operation (a tie is not found)."""
    return planted.operation_wins(cell, PLANTED_OPERATION)
