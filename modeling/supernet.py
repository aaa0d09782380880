"""The Auto-DeepLab supernet: cell-level alphas and network-level betas (paper sections 3-4).

The image enters through the paper's two-layer search stem (section 3.2), whose stride-2 and
stride-4 outputs are H(l-2) and H(l-1) of the first layer; from there every node applies the
shared cell to each incoming state (Eq. 6) with the H(l-2) that `prev_prev_level` picks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from modeling.aspp import ASPPHead
from modeling.operations import PRIMITIVES, SEARCH_STEM, Stem
from modeling.plain_supernet import PlainSearchCell
from modeling.search_cell import (FastPaths, SearchCell, SharedSourceOps, state_edges,
                                  weights_by_state)
from modeling.search_space import (DIRECTIONS, NUM_LEVELS, STEM_LEVELS, layer_levels,
                                   level_channels, level_exists, level_sizes, level_stride,
                                   normalize_alphas, normalize_betas, normalize_edge_weights,
                                   num_edges, prev_prev_level, transition_mask)

# ASPP rate at level s is ASPP_RATE_BASE / stride (paper section 4.1): 24, 12, 6, 3.
ASPP_RATE_BASE = 96
ARCH_INIT_SCALE = 1e-3  # alphas and betas ~ 1e-3 * N(0, 1) (paper section 4.1)
IMPLEMENTATIONS = ("fast", "plain")


@dataclass(frozen=True)
class SupernetConfig:
    """Constructor arguments of the supernet; stored in checkpoints so they rebuild it."""

    num_classes: int
    num_layers: int = 12
    filter_multiplier: int = 8
    block_multiplier: int = 5
    steps: int = 5
    # Filters of the two stem layers (stride 2, then 4); the paper gives none. These are the
    # retrained network's filters at the same strides, so both networks' first cells read
    # inputs of the same widths.
    stem_widths: tuple[int, int] = tuple(filters for filters, _ in SEARCH_STEM)
    # Width of each level's ASPP; None means the width of the level's cell output.
    aspp_channels: int | None = None
    # K of PC-DARTS' partial channel connections (a different algorithm); 1: the paper's.
    partial_channels: int = 1
    # The cells: "fast" (modeling/search_cell.py) or "plain", one module per edge as DARTS
    # writes it (modeling/plain_supernet.py). Same computation; plain is the readable one.
    implementation: str = "fast"

    def __post_init__(self):
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got "
                             f"{self.implementation!r}")
        if not 1 <= self.block_multiplier <= self.steps:
            raise ValueError("block_multiplier must be between 1 and steps")
        if self.partial_channels < 1 or self.filter_multiplier % self.partial_channels:
            raise ValueError(f"partial_channels must divide the filter multiplier "
                             f"{self.filter_multiplier}, got {self.partial_channels}")
        object.__setattr__(self, "stem_widths", tuple(self.stem_widths))
        if len(self.stem_widths) != len(SEARCH_STEM):
            raise ValueError(f"stem_widths: one width per stem layer ({len(SEARCH_STEM)}), got "
                             f"{self.stem_widths}")

    def level_channels(self, level: int) -> int:
        """Width of one block at `level`: F * 2^level."""
        return level_channels(self.filter_multiplier, level)

    def output_channels(self, layer: int, level: int) -> int:
        """Channels of node (layer, level); layers -2 and -1 are the stem's two outputs."""
        if layer < 0:
            return self.stem_widths[layer]
        return self.block_multiplier * self.level_channels(level)


class AutoDeepLabSearch(nn.Module):
    """Supernet over the L x 4 trellis with a shared cell (paper section 3-4.1).

    `forward(images)` returns logits at the input size: the sum of one ASPP head per level
    of the last layer, upsampled. `checkpoint_cells=True` recomputes each cell's activations
    in the backward pass instead of storing them (less memory, same gradients). `fast_paths`
    sets the fast cells' `FastPaths` (speed only); None takes the defaults of the input's
    device. `config.implementation` chooses the fast cells or the plain ones.
    """

    def __init__(self, config: SupernetConfig, checkpoint_cells: bool = False,
                 fast_paths: FastPaths | None = None):
        super().__init__()
        self.config = config
        self.checkpoint_cells = checkpoint_cells
        cfg = config
        self.stem = Stem(3, [(w, stride) for w, (_, stride) in zip(cfg.stem_widths,
                                                                      SEARCH_STEM)])
        mask = transition_mask(cfg.num_layers)
        self.register_buffer("beta_mask", torch.from_numpy(mask), persistent=False)
        self.alphas = nn.Parameter(ARCH_INIT_SCALE * torch.randn(num_edges(cfg.steps),
                                                                 len(PRIMITIVES)))
        self.betas = nn.Parameter(ARCH_INIT_SCALE * torch.randn(cfg.num_layers, NUM_LEVELS,
                                                                len(DIRECTIONS)))
        # PC-DARTS' edge-normalisation logits, one per cell edge (partial channels only).
        self.edge_logits = (nn.Parameter(ARCH_INIT_SCALE * torch.randn(num_edges(cfg.steps)))
                            if cfg.partial_channels > 1 else None)
        # The trellis, from the table of allowed transitions: node (l, t) receives from every
        # (l-1, s) with mask[l, s, d] and s + DIRECTIONS[d] == t.
        self.cells = nn.ModuleDict()
        self.incoming: dict[tuple[int, int], list[tuple[int, int]]] = {}
        # The level of layer l-2 whose node each cell reads as H(l-2).
        self.prev_prev_levels: dict[tuple[int, int], int] = {}
        for layer in range(cfg.num_layers):
            for target in range(NUM_LEVELS):
                sources = [(s, d) for s in range(NUM_LEVELS) for d, step in enumerate(DIRECTIONS)
                           if mask[layer, s, d] and s + step == target]
                if not sources:
                    continue
                self.incoming[(layer, target)] = sources
                source = prev_prev_level(target, layer_levels(layer - 2))
                self.prev_prev_levels[(layer, target)] = source
                incoming = [(DIRECTIONS[d], cfg.output_channels(layer - 1, s))
                            for s, d in sources]
                args = (cfg.steps, cfg.block_multiplier, cfg.level_channels(target), incoming,
                        cfg.output_channels(layer - 2, source), cfg.partial_channels)
                self.cells[self._key(layer, target)] = (
                    SearchCell(*args, fast_paths=fast_paths) if cfg.implementation == "fast"
                    else PlainSearchCell(*args))
        # Where each node's incoming transitions sit in betas.view(-1), node by node in
        # `incoming` order, built once: the forward gathers all of them in one call and splits
        # them per node in another.
        index = [(layer * NUM_LEVELS + s) * len(DIRECTIONS) + d
                 for (layer, _), sources in self.incoming.items() for s, d in sources]
        self.register_buffer("beta_index", torch.tensor(index), persistent=False)
        # The fast cells read the alphas by state, arranged once per forward pass
        # (`weights_by_state`): the edges in that order, and how many per state.
        edges = state_edges(cfg.steps)
        self.register_buffer("alpha_order", torch.tensor(sum(edges, [])), persistent=False)
        self.state_counts = [len(e) for e in edges]
        # ... and the (groups, channels) of every state's operations, whose batch norms' scales
        # are made for all of them at once.
        self.bn_widths = sorted({(ops.groups, ops.channels) for ops in self.modules()
                                 if isinstance(ops, SharedSourceOps)})
        last = cfg.num_layers - 1
        self.head_levels = [s for s in range(NUM_LEVELS) if level_exists(last, s)]
        self.heads = nn.ModuleDict({
            str(s): ASPPHead(cfg.output_channels(last, s),
                             cfg.aspp_channels or cfg.output_channels(last, s),
                             ASPP_RATE_BASE // level_stride(s), cfg.num_classes)
            for s in self.head_levels})
        # The convolution weights channels-last, as the activations: their gradients then come
        # in the parameters' own layout and are kept as they are (otherwise copied, one call
        # each, and each weight converted in every forward call).
        self.to(memory_format=torch.channels_last)

    @staticmethod
    def _key(layer: int, level: int) -> str:
        return f"{layer}_{level}"

    def set_skip_dropout(self, rate: float) -> None:
        """Dropout at `rate` on every skip_connect while training (`operations.skip_connect`);
        0 turns it off. A training setting, not part of the architecture or its checkpoint."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"skip dropout must be in [0, 1), got {rate}")
        for module in self.modules():
            if hasattr(module, "skip_dropout"):
                module.skip_dropout = rate

    def named_arch_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The architecture parameters by name: cell alphas (E, ops) and network betas
        (L, 4, 3), and with partial channels the edge-normalisation logits (E,)."""
        params = [("alphas", self.alphas), ("betas", self.betas)]
        return params + ([] if self.edge_logits is None else [("edge_logits", self.edge_logits)])

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters (`named_arch_parameters`), what Adam trains."""
        return [p for _, p in self.named_arch_parameters()]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: what the weight optimiser trains."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def normalized_alphas(self) -> torch.Tensor:
        return normalize_alphas(self.alphas)

    def normalized_betas(self) -> torch.Tensor:
        return normalize_betas(self.betas, self.beta_mask)

    def normalized_edge_weights(self) -> torch.Tensor | None:
        if self.edge_logits is None:
            return None
        return normalize_edge_weights(self.edge_logits, self.config.steps)

    def forward(self, images: torch.Tensor,
                operation_mask: torch.Tensor | None = None) -> torch.Tensor:
        """images: (N, 3, H, W) -> logits (N, num_classes, H, W).

        `operation_mask` (E, ops), 0 or 1, multiplies the normalised alphas: a 0 removes that
        operation from that edge's mixture and leaves the others' weights as they are
        (selection by perturbation, engine/perturbation.py). None: the whole supernet."""
        cfg = self.config
        alphas = self.normalized_alphas()  # (E, ops)
        if operation_mask is not None:
            alphas = alphas * operation_mask.to(alphas.dtype)
        # Each node's normalised betas, (G,) for its G incoming transitions.
        betas = dict(zip(self.incoming, self.normalized_betas().reshape(-1)[self.beta_index]
                         .split([len(sources) for sources in self.incoming.values()])))
        edge_weights = self.normalized_edge_weights()  # (E,) or None
        # What every cell reads of them; the fast cells read them alike, arranged once.
        if cfg.implementation == "fast":
            arch = (weights_by_state(alphas, self.alpha_order, self.state_counts,
                                     self.bn_widths, edge_weights),)
        else:
            arch = (alphas, edge_weights)
        # Channels-last from the stem on: the cells' grouped convolutions are fastest on it.
        images = images.contiguous(memory_format=torch.channels_last)
        half, quarter = self.stem(images)  # (N, 64, H/2, W/2), (N, 128, H/4, W/4)
        # Layers -2 and -1, each keyed by its level.
        prev_prev, prev = {STEM_LEVELS[-2]: half}, {STEM_LEVELS[-1]: quarter}
        sizes = level_sizes(prev[0].shape[-2:])
        for layer in range(cfg.num_layers):
            current = {}
            for target in range(NUM_LEVELS):
                sources = self.incoming.get((layer, target))
                if sources is None:
                    continue
                cell = self.cells[self._key(layer, target)]
                inputs = [prev[s] for s, _ in sources]
                args = (inputs, prev_prev[self.prev_prev_levels[(layer, target)]],
                        betas[(layer, target)], sizes[target], *arch)
                if self.checkpoint_cells and self.training:
                    current[target] = torch.utils.checkpoint.checkpoint(
                        cell, *args, use_reentrant=False)
                else:
                    current[target] = cell(*args)  # (N, mult * F * 2^t, H_t, W_t)
            prev_prev, prev = prev, current
        size = images.shape[-2:]
        logits = None
        for s in self.head_levels:
            out = F.interpolate(self.heads[str(s)](prev[s]), size=size, mode="bilinear",
                                align_corners=False)
            logits = out if logits is None else logits + out
        return logits

    def genotype(self):
        """The architecture decoded so far (paper section 3.3), as a `Genotype`."""
        from modeling.decoding import genotype_from_arch

        edge_logits = (None if self.edge_logits is None
                       else self.edge_logits.detach().cpu().numpy())
        return genotype_from_arch(self.alphas.detach().cpu().numpy(),
                                  self.betas.detach().cpu().numpy(), edge_logits)

    def model_args(self) -> dict:
        return asdict(self.config)


def arch_entropy(model: AutoDeepLabSearch) -> tuple[float, float]:
    """Mean entropy (nats) of the alpha softmax per edge and of the beta softmax per node
    (`modeling.decoding.mean_entropies`, the one formula decode reports too)."""
    from modeling.decoding import arch_probabilities, mean_entropies

    alpha_h, _, beta_h, _ = mean_entropies(*arch_probabilities(model.alphas, model.betas,
                                                               model.edge_logits))
    return alpha_h, beta_h
