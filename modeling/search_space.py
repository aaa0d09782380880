"""The Auto-DeepLab search space in one place (paper section 3).

Everything that both the supernet and decoding need to agree on lives here, apart from the
candidate operations (`modeling.operations.OPS`): the levels and their geometry, the edge
numbering inside a cell, the table of allowed network-level transitions and the one
normalisation of the architecture parameters.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NUM_LEVELS = 4  # output strides 4, 8, 16, 32
BASE_STRIDE = 4  # output stride of level 0, where the stem leaves the image
# The stem's two outputs play the two layers before the first (paper section 3.2): layer -2 is
# its stride-2 output (level -1), layer -1 its stride-4 output (level 0).
STEM_LEVELS = {-2: -1, -1: 0}
# Direction d of a transition from level s: 0 -> s-1 (up in resolution), 1 -> s, 2 -> s+1.
DIRECTIONS = (-1, 0, 1)


def num_edges(steps: int) -> int:
    """Edges in a cell of `steps` blocks: block i (0-based) reads 2 + i states."""
    return sum(2 + i for i in range(steps))


def edge_offset(block: int) -> int:
    """Index of the first edge of `block` (0-based) in the block-by-block edge numbering."""
    return sum(2 + i for i in range(block))


def cell_edges(steps: int) -> list[tuple[int, int]]:
    """(block, input_index) of every edge, in edge-index order.

    Input index convention (paper section 3): 0 = H(l-2), 1 = H(l-1), k + 1 = block k (1-based).
    """
    return [(block, inp) for block in range(steps) for inp in range(2 + block)]


def level_stride(level: int) -> int:
    """Output stride of a level: 4, 8, 16, 32 for levels 0..3 (2 for the stem's level -1)."""
    return BASE_STRIDE * 2 ** level if level >= 0 else BASE_STRIDE // 2 ** -level


def level_channels(filter_multiplier: int, level: int) -> int:
    """Width of one block of a cell at `level`: F * 2^level (paper section 4.1), in both
    networks."""
    return filter_multiplier * 2 ** level


def coarser(size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) one level down: halved, odd sizes rounded up, as a stride-2 3x3 conv with
    padding 1 gives, and the released model's resize by 0.5: int((n - 1) * 0.5 + 1)."""
    return tuple((v + 1) // 2 for v in size)


def level_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """(H, W) of levels 0..3, given level 0's."""
    sizes = [tuple(size)]
    for _ in range(1, NUM_LEVELS):
        sizes.append(coarser(sizes[-1]))
    return sizes


def level_exists(layer: int, level: int) -> bool:
    """Node (layer, level) exists; layers -2 and -1 are the stem's outputs (`STEM_LEVELS`)."""
    if layer < 0:
        return STEM_LEVELS.get(layer) == level
    return 0 <= level < NUM_LEVELS and level <= layer + 1


def layer_levels(layer: int) -> list[int]:
    """The levels of the nodes that exist at `layer` of the trellis (stem layers included)."""
    return [s for s in range(min(STEM_LEVELS.values()), NUM_LEVELS) if level_exists(layer, s)]


def prev_prev_level(level: int, levels) -> int:
    """The level of the H(l-2) that a cell at `level` reads, among the `levels` that exist at
    layer l-2 of its network. Both networks ask this one rule:

    - the supernet passes every level of layer l-2: a cell reads the same level where it
      exists (paper Eq. 6), else the nearest one, the deepest level of layer l-2. For a
      node at level l + 1, reached only by going down at every layer, that is the level
      every path into it had two layers back; for a node at level l, paths came from that
      level or the next finer one.
    - the retrained network passes its path's one level at layer l-2: a cell reads the cell
      two layers back on the path, whatever its level, as the released model does
      (research/deeplab/core/nas_network.py feeds `cell_outputs[-2]`).

    The first two layers read the stem's outputs (`STEM_LEVELS`). The tensor read is then
    resized bilinearly to the size the cell preprocesses at (`modeling.operations.resize`).
    """
    return min(levels, key=lambda s: abs(s - level))


def transition_mask(num_layers: int) -> np.ndarray:
    """Boolean (L, 4, 3): mask[l, s, d] says node (l-1, s) may move in direction d into layer l.

    For l = 0 the source is the stem at level 0, so only d = 1 and d = 2 are valid.
    """
    mask = np.zeros((num_layers, NUM_LEVELS, len(DIRECTIONS)), dtype=bool)
    for layer in range(num_layers):
        for level in range(NUM_LEVELS):
            if not level_exists(layer - 1, level):
                continue
            for d, step in enumerate(DIRECTIONS):
                target = level + step
                mask[layer, level, d] = 0 <= target < NUM_LEVELS and level_exists(layer, target)
    return mask


def normalize_alphas(alphas: torch.Tensor) -> torch.Tensor:
    """Softmax over operations for every edge: (E, ops) -> (E, ops)."""
    return F.softmax(alphas, dim=-1)


def normalize_betas(betas: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 7: softmax of each source node's betas over its valid outgoing directions.

    betas: (L, 4, 3) raw; mask: (L, 4, 3) bool. Invalid transitions get exactly 0 and the
    weights leaving every existing node sum to one. This is the only beta normalisation in
    the project: the supernet's forward and decoding both call it.
    """
    mask = mask.to(device=betas.device, dtype=torch.bool)
    logits = betas.masked_fill(~mask, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    # Rows with no valid direction (nodes that do not exist) are all -inf -> NaN; zero them.
    return torch.where(mask, probs, torch.zeros_like(probs))


def normalize_edge_weights(logits: torch.Tensor, steps: int) -> torch.Tensor:
    """PC-DARTS edge normalisation: softmax of each block's edge logits over its inputs.

    logits: (E,) raw, edges numbered block by block (`cell_edges`). Returns (E,) weights that
    sum to one within every block.
    """
    return torch.cat([F.softmax(logits[edge_offset(b):edge_offset(b + 1)], dim=0)
                      for b in range(steps)])
