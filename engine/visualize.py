"""The architecture picture: the network path on the layer x level trellis, beside the cell.

Left panel (paper Fig. 1): every valid transition of the trellis drawn with a width and
opacity that grow with its normalised beta, its value written next to it, and the decoded path
drawn thick on top. Right panel (paper Fig. 3): the cell as a graph, H(l-2) and H(l-1) feeding
blocks 1..B, every kept edge labelled with its operation, the blocks concatenated to the output.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only; decode runs on machines without a display

import matplotlib.pyplot as plt  # noqa: E402  (must follow matplotlib.use)
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402

from modeling.genotypes import Genotype, input_name  # noqa: E402
from modeling.operations import PRIMITIVES  # noqa: E402
from modeling.search_space import DIRECTIONS, NUM_LEVELS, level_stride, transition_mask  # noqa: E402
from utils.checkpoint import atomic_write  # noqa: E402

PATH_COLOR = "tab:red"
EDGE_CMAP = "Blues"
# One colour per operation so the cell reads at a glance; `none` is never drawn.
OP_COLORS = {"none": "grey", "max_pool_3x3": "tab:brown", "avg_pool_3x3": "tab:pink",
             "skip_connect": "tab:gray", "sep_conv_3x3": "tab:blue", "sep_conv_5x5": "tab:green",
             "atrous_conv_3x3": "tab:orange", "atrous_conv_5x5": "tab:purple"}
# Operations added to the table since: colours not used above.
OTHER_OP_COLORS = ("tab:red", "tab:olive", "tab:cyan", "black", "gold", "navy")


def op_color(op: str) -> str:
    if op in OP_COLORS:
        return OP_COLORS[op]
    others = [name for name in PRIMITIVES if name not in OP_COLORS]
    return OTHER_OP_COLORS[others.index(op) % len(OTHER_OP_COLORS)]
# Labels sit this far along a transition from its source, so the labels of two transitions
# that cross between the same pair of layers do not land on the same spot.
LABEL_POSITION = 0.3
DPI = 150
ARC_RAD = 0.6  # curvature of every cell edge: apex height = 0.3 x span


def _draw_trellis(ax, probs: np.ndarray, network_path, path_prob: float | None) -> None:
    num_layers = probs.shape[0]
    mask = transition_mask(num_layers)
    cmap = plt.get_cmap(EDGE_CMAP)
    # x = layer (-1 is the stem), y = level; the y axis is inverted so stride grows downward.
    for layer in range(num_layers):
        for source in range(NUM_LEVELS):
            for d, step in enumerate(DIRECTIONS):
                if not mask[layer, source, d]:
                    continue
                p = float(probs[layer, source, d])
                x0, y0, x1, y1 = layer - 1, source, layer, source + step
                ax.plot([x0, x1], [y0, y1], color=cmap(0.35 + 0.65 * p),
                        linewidth=0.6 + 4.0 * p, alpha=0.35 + 0.65 * p, zorder=1,
                        solid_capstyle="round")
                ax.text(x0 + LABEL_POSITION * (x1 - x0), y0 + LABEL_POSITION * (y1 - y0),
                        f"{p:.2f}", fontsize=5.5, ha="center", va="center", zorder=4,
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    xs = np.arange(-1, num_layers)
    ys = [0] + list(network_path)
    ax.plot(xs, ys, color=PATH_COLOR, linewidth=3.5, alpha=0.85, zorder=2,
            solid_capstyle="round", label="decoded path")
    for layer in range(-1, num_layers):
        levels = [0] if layer < 0 else range(min(layer + 2, NUM_LEVELS))
        for level in levels:
            on_path = ys[layer + 1] == level
            ax.scatter(layer, level, s=60 if on_path else 30, zorder=3,
                       color=PATH_COLOR if on_path else "white", edgecolors="black",
                       linewidths=0.8)
    ax.set_xticks(xs, ["stem"] + [str(layer + 1) for layer in range(num_layers)])
    ax.set_yticks(range(NUM_LEVELS), [str(level_stride(level)) for level in range(NUM_LEVELS)])
    ax.set_ylim(NUM_LEVELS - 0.5, -0.5)
    ax.set_xlim(-1.4, num_layers - 0.6)
    ax.set_xlabel("layer")
    ax.set_ylabel("output stride")
    title = "network path on the trellis (numbers: normalised beta of each transition)"
    if path_prob is not None:
        title += f"\npath probability {path_prob:.4g}"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_cell(ax, genotype: Genotype) -> None:
    # An arc diagram: H(l-2), H(l-1), blocks 1..B and the output on one row, edges from the
    # two cell inputs as arcs above it, edges between blocks and into the output below it.
    # Every arc has the same curvature, so its height grows with its span and its label sits
    # at its apex: two labels on one side differ in span (one row of height apart) or, with
    # equal spans, in midpoint (one node spacing apart), so labels never land on each other.
    steps = genotype.steps
    x = {inp: float(inp) for inp in range(steps + 2)}  # input index -> position on the row
    output_x = float(steps + 2)

    def node(xpos, text, color):
        ax.text(xpos, 0.0, text, ha="center", va="center", fontsize=8.5, zorder=3,
                bbox=dict(boxstyle="round,pad=0.35", fc=color, ec="black", lw=0.8))

    def arc(x0, x1, above, **style):
        rad = -ARC_RAD if above else ARC_RAD  # arc3 bulges left of the direction of travel
        ax.add_patch(FancyArrowPatch((x0, 0.0), (x1, 0.0), arrowstyle="-|>",
                                     connectionstyle=f"arc3,rad={rad}", shrinkA=14,
                                     shrinkB=16, **style))
        # The apex of arc3's quadratic Bezier lies rad / 2 of the chord away from it.
        return (x0 + x1) / 2, (1 if above else -1) * ARC_RAD * (x1 - x0) / 2

    for inp in (0, 1):
        node(x[inp], input_name(inp), "lightgrey")
    for block in range(steps):
        node(x[block + 2], f"block {block + 1}", "lightyellow")
    node(output_x, "H(l)\nconcat", "lightgreen")
    for block in range(steps):
        arc(x[block + 2], output_x, above=False, color="silver", linewidth=0.7,
            linestyle="--", mutation_scale=7, zorder=1)
    for block, pairs in enumerate(genotype.cell):
        for inp, op in pairs:
            lx, ly = arc(x[inp], x[block + 2], above=inp < 2, color=op_color(op),
                         linewidth=1.6, mutation_scale=10, zorder=2)
            ax.text(lx, ly, op, fontsize=6.5, ha="center", va="center", color=op_color(op),
                    zorder=4, bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none",
                                        alpha=0.9))
    height = ARC_RAD * (steps + 1) / 2 + 0.3
    ax.set_xlim(-0.6, output_x + 0.6)
    ax.set_ylim(-height, height)
    ax.set_aspect("equal")  # arc3 works in display space; equal aspect keeps the apex maths
    ax.axis("off")
    ax.set_title(f"cell: {steps} blocks, each the sum of two operations; output = concat "
                 f"of the blocks", fontsize=10)


def plot_architecture(genotype: Genotype, probs: np.ndarray, out_path: str | os.PathLike,
                      title: str | None = None, path_prob: float | None = None) -> None:
    """Write the architecture picture (PNG) to `out_path` atomically.

    genotype: the decoded architecture; probs: (L, 4, 3) normalised betas, as given to
    `decode_network_path`; path_prob: the decoded path's probability, shown in the title.
    """
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(21, 6), gridspec_kw={"width_ratios": [1.25, 1.0]})
    try:
        _draw_trellis(left, np.asarray(probs), genotype.network_path, path_prob)
        _draw_cell(right, genotype)
        if title:
            fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        atomic_write(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)
