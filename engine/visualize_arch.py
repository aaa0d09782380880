"""Heatmaps of the architecture parameters for TensorBoard (matplotlib, Agg)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from modeling.operations import PRIMITIVES  # noqa: E402
from modeling.search_space import NUM_LEVELS, cell_edges, level_stride  # noqa: E402


def alpha_figure(alphas, steps: int):
    """Softmaxed alphas (E, ops) as an edge x operation heatmap."""
    fig, ax = plt.subplots(figsize=(6, 0.25 * alphas.shape[0] + 1.5))
    im = ax.imshow(alphas, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=45, ha="right", fontsize=7)
    labels = [f"block {b + 1} <- in {i}" for b, i in cell_edges(steps)]
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def beta_figure(betas):
    """Normalised betas (L, 4, 3): one panel per direction, layer x source level."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3), sharey=True)
    titles = ("to finer level", "same level", "to coarser level")
    for d, (ax, title) in enumerate(zip(axes, titles)):
        im = ax.imshow(betas[:, :, d].T, vmin=0, vmax=1, cmap="magma", aspect="auto")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("layer")
    axes[0].set_yticks(range(NUM_LEVELS), [f"s{level_stride(s)}" for s in range(NUM_LEVELS)])
    fig.colorbar(im, ax=axes)
    return fig
