"""The search cell, evaluated source state by source state (paper section 3, Eq. 1-2 and 6).

A node (layer, level) of the trellis applies one cell to each of its up to three incoming
states (paper Eq. 6); the cell's operation weights are shared by those applications, its
batch-norm statistics are not (every application is a separate call in the paper's
formulation). Instead of one module per edge and one call per edge and incoming state, this
file evaluates:

- every incoming state of a node at once, stacked along channels as groups `g`, so a single
  batch-norm call keeps per-application statistics and the maths does not change;
- every edge that reads one state at once: the ReLU in front of the convolutions is computed
  once; the first depthwise convolution of every edge reads that one tensor as if it were
  repeated per (type, edge) (`depthwise_conv`, the repeat never stored); the separable
  pipeline keeps one layout, channels (type, group, edge, channel), which the pointwise
  convolutions of all edges read and write without copies (`grouped_pointwise`, one bmm over
  strided views); on small levels both separable types run as one tensor (one batch norm, one
  ReLU, one depthwise call with the 3x3 filters zero-padded to 5x5), on large levels one type
  at a time, their depthwise outputs computed again in the backward pass rather than stored
  (`SeparableConv`, one autograd node per stage that makes the weights its convolutions
  read from the parameters itself); the dense atrous convolutions of all edges are one
  convolution, the groups seen as more images on the CPU, a grouped convolution elsewhere;
  the parameter-free operations (pools followed by affine-free BN, identity) give the same
  tensor for every edge and are mixed by one small matmul, edge-major;
- depthwise gradients on oneDNN's fast kernels (`depthwise_grads`);
- one batch norm ends every operation with parameters, and each edge's operation weight
  (alpha) is its scale, so the weighted sum of Eq. 2 costs no multiplications of its own;
- the alphas arranged by source state once per forward pass for all cells
  (`weights_by_state`);
- the H(l-2) input once, since it is the same tensor for all incoming states of a node;
- `none` not at all (its contribution is zero; its alpha still gets a gradient through the
  softmax);
- any operation of the table (`modeling.operations.OPS`) without a fast path here
  (`FALLBACK_OPS`) as the plain supernet runs it: one module per edge, called once per edge and
  incoming state. Adding an operation to the table gives a correct search, slower only for it.

Layout of a state read by `k` edges with `G` groups: (N, G*C, H, W) channels-last in,
(k, N, H, W, G, C) out, edge-major, so that the cell adds each state's edges to the pending
blocks' sums in one call and splits each complete block off as a contiguous tensor.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.operations import (ATROUS_DILATION, NONE_OP, PRIMITIVES, FactorizedReduce,
                                 ReLUConvBN, ResizeReLUConvBN, search_op, skip_connect)
from modeling.search_space import edge_offset

OP = {name: i for i, name in enumerate(PRIMITIVES)}


@functools.cache
def op_columns(names: tuple[str, ...]) -> slice | list[int]:
    """The columns of the normalised alphas that hold the operations `names`: a slice where
    they are consecutive in the table, as they are in its default order, so selecting them is a
    view (no indexing op and no scatter in the backward); else their indices."""
    columns = [OP[name] for name in names]
    if columns == list(range(columns[0], columns[0] + len(columns))):
        return slice(columns[0], columns[0] + len(columns))
    return columns


BN_MOMENTUM = 0.1
BN_EPS = 1e-5


class AffineFreeBN(nn.Module):
    """Batch norm without a learnt scale and shift (DARTS search convention).

    With channels laid out as (group, edge, channel) every (group, edge) gets its own
    statistics in one call, exactly as separate per-edge, per-application BNs would. `scale`,
    when given, multiplies each output channel: the supernet passes the edge's operation
    weight (alpha) there, so the mixed operation's product costs no call of its own.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x, scale=None, channels: slice | None = None):
        """`channels`: x holds only these of the module's channels (their statistics); None:
        all of them."""
        if scale is not None:
            # The CPU batch-norm backward reads its weight as if it were dense (torch 2.13):
            # a stride-0 view (one edge's alpha expanded) would give wrong gradients.
            scale = scale.contiguous()
        mean, var = self.running_mean, self.running_var
        if channels is not None:
            # Slices of the buffers are views: training updates the module's own statistics.
            mean, var = mean[channels], var[channels]
        return F.batch_norm(x, mean, var, scale, None, self.training, BN_MOMENTUM, BN_EPS)


def _conv_weight(num_edges: int, channels: int, in_per_group: int, k: int) -> nn.Parameter:
    """Stacked conv weights of `num_edges` edges, initialised like nn.Conv2d per edge."""
    w = torch.empty(num_edges * channels, in_per_group, k, k)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # fan_in = in_per_group * k * k, as per edge
    return nn.Parameter(w)


SEP_CONVS = ("sep_conv_3x3", "sep_conv_5x5")
ATROUS_CONVS = ("atrous_conv_3x3", "atrous_conv_5x5")
PARAMETER_FREE = ("max_pool_3x3", "avg_pool_3x3", "skip_connect")  # the order of `stacked`
WEIGHTED_OPS = (*SEP_CONVS, *ATROUS_CONVS)  # the channel order of `weighted_bn`
# The operations with a fast path here; every other operation of the table runs as the plain
# supernet runs it. Both together are the table, exactly.
FAST_OPS = (NONE_OP, *PARAMETER_FREE, *SEP_CONVS, *ATROUS_CONVS)
FALLBACK_OPS = tuple(name for name in PRIMITIVES if name not in FAST_OPS)
if not set(FAST_OPS) <= set(PRIMITIVES):
    raise ImportError(f"modeling/search_cell.py has fast paths for "
                      f"{sorted(set(FAST_OPS) - set(PRIMITIVES))}, which the operation table "
                      f"(modeling/operations.py OPS) no longer has: remove them from FAST_OPS "
                      f"and SharedSourceOps too")


def state_edges(steps: int) -> list[list[int]]:
    """For each state j of a cell (0 = H(l-2), 1 = H(l-1), b + 2 = block b), the edges that
    read it, in block order: blocks max(0, j-1)..steps-1."""
    return [[edge_offset(b) + j for b in range(max(0, j - 1), steps)] for j in range(steps + 1)]


@dataclass(frozen=True)
class EdgeWeights:
    """The normalised alphas of the k edges that read one state, as `SharedSourceOps` reads
    them: the parameter-free operations' columns, `free` (k, len(PARAMETER_FREE)); those of
    the operations with parameters as the batch norm that ends them reads them (its scale),
    `bn_scales[(groups, channels)]`, channels (type, group, edge, channel), each edge's weight
    repeated over groups and channels; whole rows, `rows` (k, ops), where operations without
    a fast path need them (else None). With partial channels, `scale`: the edges' normalised
    edge weights (k,), by which the others are scaled already (the mixed operation is linear
    in its weights)."""

    free: torch.Tensor
    bn_scales: dict[tuple[int, int], torch.Tensor]
    rows: torch.Tensor | None = None
    scale: torch.Tensor | None = None


def weights_by_state(alphas: torch.Tensor, order: torch.Tensor, counts: list[int],
                     bn_widths: list[tuple[int, int]],
                     edge_weights: torch.Tensor | None = None) -> list[EdgeWeights]:
    """The normalised alphas (E, ops) as every `SearchCell` reads them, state by state
    (`EdgeWeights`): every cell reads the same, so the supernet arranges them once per forward
    pass, a gather and a few splits instead of a gather and slices per cell and state.
    `order`: the edges of `state_edges`, concatenated (on alphas' device); `counts`: how many
    per state; `bn_widths`: the (groups, channels) of the `SharedSourceOps` that will read
    them, each given its batch-norm scales of every state by one gather (where each state's
    expanded copy took a call, and its backward another); `edge_weights` (E,): partial
    channels' normalised edge weights."""
    rows, scales = alphas[order], [None] * len(counts)
    if edge_weights is not None:
        scale = edge_weights[order]
        rows, scales = rows * scale.unsqueeze(1), scale.split(counts)
    free = rows[:, op_columns(PARAMETER_FREE)].split(counts)
    whole = rows.split(counts) if FALLBACK_OPS else [None] * len(counts)
    bn_scales = [{} for _ in counts]
    for groups, channels in bn_widths:
        index = _scale_index(tuple(counts), rows.shape[1], groups, channels, rows.device)
        sizes = [len(WEIGHTED_OPS) * groups * k * channels for k in counts]
        for state, values in enumerate(torch.take(rows, index).split(sizes)):
            bn_scales[state][groups, channels] = values
    return [EdgeWeights(*parts) for parts in zip(free, bn_scales, whole, scales)]


@functools.cache
def _scale_index(counts: tuple[int, ...], ops: int, groups: int, channels: int,
                 device: torch.device) -> torch.Tensor:
    """Where each batch-norm scale of `weights_by_state` sits in the rows (E, ops),
    flattened: state after state, channels (type, group, edge, channel)."""
    columns = torch.tensor([OP[name] for name in WEIGHTED_OPS])
    parts, first = [], 0
    for k in counts:
        edges = torch.arange(first, first + k)
        index = (edges * ops).view(1, 1, k, 1) + columns.view(-1, 1, 1, 1)
        parts.append(index.expand(-1, groups, k, channels).reshape(-1))
        first += k
    return torch.cat(parts).to(device)


@dataclass(frozen=True)
class FastPaths:
    """The fast paths' size thresholds, and whether the oneDNN workarounds run. They change
    speed only: every setting computes the same (the reference equality is tested at both
    extremes of each). `for_device` gives each device's defaults.

    merged_depthwise_max_pixels: levels up to this many pixels run both separable types as one
        tensor (fewer calls); larger ones one type at a time (fewer taps on oneDNN's slow 5x5
        kernels), their depthwise outputs computed again in the backward pass, not stored.
    block_diagonal_max_channels: up to this many channels per edge, the edges of a (type,
        group) are one block-diagonal matrix in the pointwise bmm: k times the multiply-adds,
        but MKL is slow on 8 x 8 matrices.
    strided_output_min_rows: from this many rows (N*H*W) on, the pointwise bmm writes its
        strided output directly, one batch entry at a time: faster than a copy after it on
        large levels (1.2 against 1.5 ms at 4608 rows), 3-4x slower on small ones (CPU).
    onednn_weight_grads: the depthwise weight gradient in slices of at most 3 filter columns,
        each copied to channels-last first (`_depthwise_weight_grad`): works around oneDNN's
        slow generic kernels. Other devices take the gradient in one call.
    atrous_groups_as_images: the dense atrous convolutions see the groups (incoming states)
        as more images, one copy into that layout and one out (`groups_to_batch`): oneDNN's
        grouped dense kernels are up to 3x slower. Other devices run one grouped
        convolution per type, its weights repeated per group: no copies, fewer calls.
    """

    merged_depthwise_max_pixels: int = 16 * 16
    block_diagonal_max_channels: int = 8
    strided_output_min_rows: int = 1024
    onednn_weight_grads: bool = True
    atrous_groups_as_images: bool = True

    @staticmethod
    def for_device(device: torch.device | str) -> "FastPaths":
        """The defaults of `device`: the CPU's were measured there; elsewhere the oneDNN
        workarounds are off, matmuls write their strided outputs themselves, and the other
        thresholds are the CPU's until measured on a GPU."""
        return CPU_FAST_PATHS if torch.device(device).type == "cpu" else OTHER_FAST_PATHS


CPU_FAST_PATHS = FastPaths()
# Other devices: no oneDNN workarounds; every pointwise matmul writes its strided output
# itself (cuBLAS takes any output stride; a copy after it would be one kernel more).
OTHER_FAST_PATHS = FastPaths(strided_output_min_rows=0, onednn_weight_grads=False,
                             atrous_groups_as_images=False)


class SharedSourceOps(nn.Module):
    """The mixed operations of all `num_edges` edges that read one state.

    Edge e of this state goes to block `first_block + e`. Parameters are stacked per edge
    along dim 0 in blocks of `channels` rows: rows [e*C, (e+1)*C) belong to edge e.
    `fast_paths`: None takes the defaults of the device the input is on.
    """

    def __init__(self, channels: int, num_edges: int, groups: int,
                 fast_paths: FastPaths | None = None):
        super().__init__()
        self.channels, self.num_edges, self.groups = channels, num_edges, groups
        self.fast_paths = fast_paths
        self.skip_dropout = 0.0  # AutoDeepLabSearch.set_skip_dropout
        c, k, wide = channels, num_edges, groups * num_edges * channels
        # Separable convolutions, twice depthwise then pointwise (`_separable` reads them by
        # name: <type>_dw<stage>, <type>_pw<stage>).
        self.sep_conv_3x3_dw1 = _conv_weight(k, c, 1, 3)
        self.sep_conv_3x3_pw1 = _conv_weight(k, c, c, 1)
        self.sep_conv_3x3_dw2 = _conv_weight(k, c, 1, 3)
        self.sep_conv_3x3_pw2 = _conv_weight(k, c, c, 1)
        self.sep_conv_5x5_dw1 = _conv_weight(k, c, 1, 5)
        self.sep_conv_5x5_pw1 = _conv_weight(k, c, c, 1)
        self.sep_conv_5x5_dw2 = _conv_weight(k, c, 1, 5)
        self.sep_conv_5x5_pw2 = _conv_weight(k, c, c, 1)
        # Both separable types run as one tensor, channels (type, group, edge, channel).
        self.sep_conv_bn1 = AffineFreeBN(len(SEP_CONVS) * wide)
        # Dilated convolutions (read by name in `forward`).
        self.atrous_conv_3x3 = _conv_weight(k, c, c, 3)
        self.atrous_conv_5x5 = _conv_weight(k, c, c, 5)
        # The batch norm that ends every operation with parameters (the separable types'
        # second, the dilated types' only), for all of them at once: channels (type, group,
        # edge, channel), types in WEIGHTED_OPS order.
        self.weighted_bn = AffineFreeBN(len(WEIGHTED_OPS) * wide)
        self.max_pool_bn = AffineFreeBN(groups * c)
        self.avg_pool_bn = AffineFreeBN(groups * c)
        # Operations without a fast path: one search module per edge, shared by the groups.
        self.fallback = nn.ModuleDict({name: nn.ModuleList(search_op(name, c) for _ in range(k))
                                       for name in FALLBACK_OPS})

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Search checkpoints written before both separable types shared one batch norm hold
        # one per type; the shared one's channels are theirs, concatenated in SEP_CONVS order.
        for stage in ("bn1", "bn2"):
            for stat in ("running_mean", "running_var"):
                old = [f"{prefix}{name}_{stage}.{stat}" for name in SEP_CONVS]
                if all(key in state_dict for key in old):
                    state_dict[f"{prefix}sep_conv_{stage}.{stat}"] = torch.cat(
                        [state_dict.pop(key) for key in old])
        # Written before the operations with parameters shared their last batch norm: one for
        # both separable types, one per dilated type; the shared one's channels are theirs,
        # concatenated in WEIGHTED_OPS order.
        for stat in ("running_mean", "running_var"):
            old = [f"{prefix}sep_conv_bn2.{stat}",
                   *(f"{prefix}{name}_bn.{stat}" for name in ATROUS_CONVS)]
            if all(key in state_dict for key in old):
                state_dict[f"{prefix}weighted_bn.{stat}"] = torch.cat(
                    [state_dict.pop(key) for key in old])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _separable(self, x: torch.Tensor, stage: int, names, recompute: bool,
                   paths: FastPaths) -> torch.Tensor:
        """Stage `stage` (1 or 2) of the separable types `names`, every edge, in one call
        (`SeparableConv`).

        Stage 1 reads r, (N, G*C, H, W): channel (group, channel) feeds one depthwise filter
        per (type, edge), as if it were repeated. Stage 2 reads (N, types*G*k*C, H, W): one
        filter per channel. Both return (N, types*G*k*C, H, W), channels (type, group, edge,
        channel), channels-last.
        """
        spec = SeparableStage(len(names), self.groups, self.num_edges, stage == 1, recompute,
                              paths)
        return SeparableConv.apply(x, spec, *(getattr(self, f"{name}_dw{stage}") for name in names),
                                   *(getattr(self, f"{name}_pw{stage}") for name in names))

    def forward(self, x: torch.Tensor, weights: EdgeWeights) -> torch.Tensor:
        """x: (N, G*C, H, W) channels-last; weights: the k edges' normalised alphas.

        Returns the mixed operation of every edge (paper Eq. 2), edge-major: (k, N, H, W, G,
        C), contiguous.
        """
        n, _, h, w = x.shape
        g, k, c = self.groups, self.num_edges, self.channels
        paths = self.fast_paths or FastPaths.for_device(x.device)

        # Channels-last throughout: depthwise convolutions run several times faster on it,
        # and (group, edge, channel) is then the innermost, contiguous order.
        r = F.relu(x)  # shared by all four convolution types of all k edges
        # Separable convolutions, all k edges at once; stage 1's depthwise filters all read
        # the same r. Small levels run both types as one tensor (fewer calls); larger ones
        # one type at a time, so the 3x3 work does not run on oneDNN's slower 5x5 kernels.
        # Large levels also compute the depthwise outputs again in the backward pass instead
        # of keeping them (`SeparableConv`): they hold most of the search's memory.
        large = h * w > paths.merged_depthwise_max_pixels
        calls = [(name,) for name in SEP_CONVS] if large else [SEP_CONVS]
        terms, first = [], 0  # each type's output before the batch norm that ends it
        for names in calls:
            t = len(names)
            # The shared batch norm's channels of these types; None: all of them.
            channels = None if t == len(SEP_CONVS) else slice(first * g * k * c,
                                                               (first + t) * g * k * c)
            y = self._separable(r, 1, names, large, paths)
            # Stage 2: per-edge BN, ReLU and depthwise conv, then the pointwise convs again.
            # In place: batch norm's backward needs its input, not its output.
            y = F.relu(self.sep_conv_bn1(y, channels=channels), inplace=True)
            terms.append(self._separable(y, 2, names, large, paths))
            first += t
        # The dense atrous convolutions: the same weights for every group (incoming state),
        # the groups as more images on the CPU, else one grouped convolution
        # (`FastPaths.atrous_groups_as_images`).
        if paths.atrous_groups_as_images:
            r_batch = groups_to_batch(r, g)
            for name in ATROUS_CONVS:
                terms.append(batch_to_groups(same_conv(r_batch, getattr(self, name),
                                                       ATROUS_DILATION), g))
        else:
            for name in ATROUS_CONVS:
                terms.append(same_conv(r, getattr(self, name), ATROUS_DILATION, groups=g))
        # One batch norm ends every operation with parameters, each (type, group, edge,
        # channel) with its own statistics; its scale is the edge's weight of the operation
        # (alpha), so the weighted sum of Eq. 2 is a sum over the types.
        types = len(WEIGHTED_OPS)
        y = self.weighted_bn(torch.cat(terms, dim=1), weights.bn_scales[g, c])
        # Summed over the types, edge-major: (k, N, H, W, G, C), contiguous.
        out = nhwc(y).view(n, h, w, types, g, k, c).permute(5, 0, 1, 2, 4, 6, 3).sum(dim=6)
        # Parameter-free operations: one tensor for all k edges, mixed by one small matmul
        # (edge-major, as the others' sum).
        max_pool = self.max_pool_bn(F.max_pool2d(x, 3, 1, 1))
        avg_pool = self.avg_pool_bn(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        skip = skip_connect(x, self.skip_dropout, self.training)
        # Concatenated as images, channels-last: memory (3, N, H, W, G*C), one row per op.
        stacked = nhwc(torch.cat([max_pool, avg_pool, skip])).reshape(len(PARAMETER_FREE), -1)
        free = torch.mm(weights.free, stacked).view(k, n, h, w, g, c)
        # Operations without a fast path, as the plain supernet runs them: every edge's module
        # on every group (incoming state) apart, so batch norm sees one application at a time.
        for name, edge_ops in self.fallback.items():
            y = torch.stack([torch.stack([nhwc(op(part)) for op in edge_ops])
                             for part in x.split(c, dim=1)], dim=4)  # (k, N, H, W, G, C)
            out = out + y * weights.rows[:, OP[name]].view(k, 1, 1, 1, 1, 1)
        return out + free


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in `dtype`: x itself when it is already, without an operator call (`x.to(dtype)` is
    one even then, and every call costs host time: thousands per step, docs/gpus.md)."""
    return x if x.dtype == dtype else x.to(dtype)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> its channels-last memory as an (N, H, W, C) view (copies only if the
    tensor is not channels-last already)."""
    return x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) contiguous -> the (N, C, H, W) view with channels-last strides."""
    return x.permute(0, 3, 1, 2)


def groups_to_batch(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, G*C, H, W) channels-last -> (N*G, C, H, W) channels-last: every group an image."""
    return x if groups == 1 else Regroup.apply(x, groups, True)


def batch_to_groups(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of `groups_to_batch`: (N*G, C, H, W) -> (N, G*C, H, W), channels-last."""
    return x if groups == 1 else Regroup.apply(x, groups, False)


class Regroup(torch.autograd.Function):
    """`groups_to_batch` (`to_batch`) or `batch_to_groups`, and the other as its backward:
    one strided view and one copy each way, where a chain of views and a copy would each add
    their own backward."""

    @staticmethod
    def forward(ctx, x, groups: int, to_batch: bool):
        ctx.groups, ctx.to_batch = groups, to_batch
        return _regroup(x, groups, to_batch)

    @staticmethod
    def backward(ctx, grad):
        return _regroup(grad, ctx.groups, not ctx.to_batch), None, None


def _regroup(x: torch.Tensor, groups: int, to_batch: bool) -> torch.Tensor:
    x = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    if to_batch:  # memory (N, H, W, G, C) read as (N, G, H, W, C)
        view = memory_view(x, (n, h, w, groups, c // groups), (0, 3, 1, 2, 4))
        return as_channels_last(view.reshape(n * groups, h, w, c // groups))
    # memory (N, G, H, W, C) read as (N, H, W, G, C)
    view = memory_view(x, (n // groups, groups, h, w, c), (0, 2, 3, 1, 4))
    return as_channels_last(view.reshape(n // groups, h, w, groups * c))


def same_conv(x: torch.Tensor, weight: torch.Tensor, dilation: int,
              groups: int = 1) -> torch.Tensor:
    """A dense stride-1 'same' convolution on its reachable taps (`reachable_taps`); with
    `groups`, every group of x's channels convolved with the same `weight`."""
    taps = reachable_size(weight.shape[-2:], dilation, x.shape[-2:])
    if groups > 1 or taps != tuple(weight.shape[-2:]):
        weight = GroupWeights.apply(weight, taps, groups)
    return F.conv2d(x, weight, padding=same_padding(weight, dilation), dilation=dilation,
                    groups=groups)


class GroupWeights(torch.autograd.Function):
    """The central `taps` (k'_h, k'_w) of `weight` (O, I, k_h, k_w), repeated for `groups`
    groups, as a grouped `same_conv` reads them: (G*O, I, k'_h, k'_w). The backward sums the
    groups' gradients straight into the parameter's channels-last layout, the cut taps' zero
    around them: where a slice's and a repeat's backward, then a copy into the parameter's
    layout, took up to four kernels, one or two here."""

    @staticmethod
    def forward(ctx, weight, taps: tuple[int, int], groups: int):
        ctx.groups, ctx.kernel = groups, tuple(weight.shape[-2:])
        centre = _centre_view(weight, taps)
        return centre.repeat(groups, 1, 1, 1) if groups > 1 else centre

    @staticmethod
    def backward(ctx, grad):
        g, (kh, kw) = ctx.groups, ctx.kernel
        rows, channels, th, tw = grad.shape
        if not grad.is_contiguous(memory_format=torch.channels_last):
            grad = grad.contiguous(memory_format=torch.channels_last)
        # Channels-last memory, (G, O, k'_h, k'_w, I): summed over the groups, it is the
        # parameter's channels-last memory (O, k_h, k_w, I), or its centre.
        per_group = memory_view(grad, (g, rows // g, th, tw, channels))
        if (th, tw) == (kh, kw):
            out = per_group.sum(dim=0)
        else:
            out = grad.new_zeros(rows // g, kh, kw, channels)
            torch.sum(per_group, dim=0, out=_centre_view(out, (th, tw), dims=(1, 2)))
        return out.permute(0, 3, 1, 2), None, None


def reachable_size(kernel, dilation: int, size) -> tuple[int, int]:
    """The central taps (k'_h, k'_w) of an odd `kernel` (k_h, k_w) at `dilation` that can read
    inside an input of `size` (H, W) (`reachable_taps`)."""
    return tuple(min(k, 2 * ((extent - 1) // dilation) + 1) for k, extent in zip(kernel, size))


def reachable_taps(weight: torch.Tensor, dilation: int, size) -> torch.Tensor:
    """The taps of an odd `weight` that can read inside an input of `size` (H, W).

    A tap at offset o reads position p + o, outside the input for every p once |o| >= size; on
    coarse levels of small crops (2 x 2 at stride 32 of a 64 crop) a dilated 5x5 then reduces
    to its centre. Skipping the others is exact: they multiply zeros, and their gradient is
    zero too. `weight` itself when every tap can read inside.
    """
    return _centre_view(weight, reachable_size(weight.shape[-2:], dilation, size))


def _centre_view(x: torch.Tensor, taps: tuple[int, int], dims=(2, 3)) -> torch.Tensor:
    """The central `taps` of x's dims `dims` (odd sizes), as one strided view; x itself when
    they are all of them."""
    sizes, strides = list(x.shape), x.stride()
    offset = x.storage_offset()
    for dim, t in zip(dims, taps):
        offset += (sizes[dim] - t) // 2 * strides[dim]
        sizes[dim] = t
    return x if sizes == list(x.shape) else x.as_strided(sizes, strides, offset)


def same_padding(weight: torch.Tensor, dilation: int = 1) -> tuple[int, int]:
    """The padding of a stride-1 'same' convolution with the odd `weight` at `dilation`."""
    return dilation * (weight.shape[-2] // 2), dilation * (weight.shape[-1] // 2)


def repeat_channels(x: torch.Tensor, repeat: tuple[int, int, int],
                    columns: slice | None = None) -> torch.Tensor:
    """(N, G*C, H, W) -> (N, T*G*K*C, H, W) channels-last, channel (t, g, k, c) a copy of
    x's channel (g, c); `repeat` = (T, G, K). Only x's `columns` (of W) when given. x itself
    when T = K = 1 and no columns are cut."""
    outer, groups, inner = repeat
    if outer == inner == 1:
        if columns is None:
            return x
        return x[..., columns].contiguous(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    n, channels, h, w = x.shape
    first, last = (0, w) if columns is None else (columns.start, columns.stop)
    c = channels // groups
    s_n, s_c, s_h, s_w = x.stride()
    # x's memory seen as (N, H, W', T, G, K, C), the copies (T and K) with stride 0: one view
    # and one copy, instead of a chain of views.
    copies = x.as_strided((n, h, last - first, outer, groups, inner, c),
                          (s_n, s_h, s_w, 0, c * s_c, 0, s_c), x.storage_offset() + first * s_w)
    return to_nchw(copies.reshape(n, h, last - first, outer * groups * inner * c))


@dataclass(frozen=True)
class SeparableStage:
    """What a `SeparableConv` call computes besides its tensors: `types` separable types of
    `edges` edges each, applied to `groups` incoming states; `repeat`: stage 1, whose input
    channel (group, channel) feeds every (type, edge); `recompute`: keep only the inputs for
    the backward pass; `paths`: the `FastPaths` to take."""

    types: int
    groups: int
    edges: int
    repeat: bool
    recompute: bool
    paths: FastPaths

    @property
    def repeats(self) -> tuple[int, int, int]:
        """`repeat_channels`' (T, G, K) of the stage's input."""
        return (self.types, self.groups, self.edges) if self.repeat else (1, 1, 1)


class SeparableConv(torch.autograd.Function):
    """One stage of the separable convolutions of every edge: the depthwise convolution of
    x's channels repeated per (type, edge) in stage 1 (`depthwise_conv`), then the 1x1
    convolution of every (type, group, edge) block (`grouped_pointwise`).

    Called as `apply(x, stage, *depthwise, *pointwise)`: x (N, G*C, H, W) channels-last (stage
    1) or (N, T*G*K*C, H, W) (stage 2); `stage` a `SeparableStage`; then each type's
    parameters as the module holds them, depthwise (K*C, 1, k, k), odd k, and pointwise
    (K*C_out, C_in, 1, 1). Returns (N, T*G*K*C_out, H, W) channels-last, channels (type,
    group, edge, channel).

    The weights as the convolutions read them (`depthwise_weights`, `pointwise_blocks`:
    stacked, repeated per group, zero-padded to the largest kernel) are made here, where
    autograd does not record them, and their gradients go back to the parameters here: one
    autograd node instead of a dozen views and copies, each with its backward, per call.
    With `stage.recompute`, only the inputs and these weights are kept for the backward pass
    and the depthwise output, as wide as all edges together, is computed again there: one
    depthwise convolution more, for the largest tensors of the search that would otherwise be
    stored.
    """

    @staticmethod
    def forward(ctx, x, stage: SeparableStage, *weights):
        t = stage.types
        depthwise_weight = depthwise_weights(weights[:t], stage.groups, x.shape[-2:])
        pointwise_weight = pointwise_blocks(weights[t:], stage.groups, stage.edges,
                                            stage.paths.block_diagonal_max_channels)
        depthwise = depthwise_conv(x, depthwise_weight, stage.repeats)
        ctx.stage, ctx.kernels = stage, [w.shape[-1] for w in weights[:t]]
        ctx.save_for_backward(x, depthwise_weight, pointwise_weight,
                              *(() if stage.recompute else (depthwise,)))
        return grouped_pointwise(depthwise, pointwise_weight, stage.paths)

    @staticmethod
    def backward(ctx, grad):
        x, depthwise_weight, pointwise_weight, *kept = ctx.saved_tensors
        stage = ctx.stage
        needs_x, needs_w = ctx.needs_input_grad[0], any(ctx.needs_input_grad[2:])
        # Under autocast the forward ran in the grad's dtype: so does the recomputation.
        depthwise = kept[0] if kept else depthwise_conv(
            cast(x, grad.dtype), cast(depthwise_weight, grad.dtype), stage.repeats)
        grad_depthwise, grad_pw = pointwise_grads(depthwise, pointwise_weight, grad,
                                                  needs_x or needs_w, needs_w, stage.paths)
        grad_x = grad_dw = None
        if needs_x or needs_w:
            grad_x, grad_dw = depthwise_grads(x, depthwise_weight, stage.repeats,
                                              grad_depthwise, needs_x, needs_w,
                                              stage.paths.onednn_weight_grads)
        if not needs_w:
            return grad_x, None, *(None,) * (2 * stage.types)
        t, g = stage.types, stage.groups
        return (grad_x, None, *depthwise_parameter_grads(grad_dw, t, g, ctx.kernels),
                *pointwise_parameter_grads(grad_pw, t, g, stage.edges))


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat along dim 0, without a call (and a copy) for a single tensor."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def depthwise_weights(depthwise, groups: int, size) -> torch.Tensor:
    """The depthwise parameters of the separable types (`SeparableConv`), (K*C, 1, k, k) each,
    as one stage's convolution reads them: (T*G*K*C, 1, k, k), every (type, group, edge) in
    order, each group with the same filters, the smaller filters zero-padded to the largest
    (exact: the padded taps multiply by zero and their gradient is dropped,
    `depthwise_parameter_grads`), cut to the taps that can read inside `size`
    (`reachable_taps`)."""
    kernel = max(w.shape[-1] for w in depthwise)
    padded = [w if w.shape[-1] == kernel else F.pad(w, ((kernel - w.shape[-1]) // 2,) * 4)
              for w in depthwise]
    return reachable_taps(_concat([w for w in padded for _ in range(groups)]), 1, size)


def pointwise_blocks(pointwise, groups: int, edges: int,
                     block_diagonal_max_channels: int) -> torch.Tensor:
    """The pointwise parameters of the separable types, (K*C_out, C_in, 1, 1) each, as
    `grouped_pointwise` reads them: (T*G*K, C_out, C_in), one matrix per (type, group, edge),
    each group with the same; for C_in <= `block_diagonal_max_channels`, (T*G, K*C_out,
    K*C_in), the K edges of a (type, group) one block-diagonal matrix (K times the
    multiply-adds, but MKL is slow on 8 x 8 matrices)."""
    rows, c_in = pointwise[0].shape[:2]
    blocks = _concat([w for w in pointwise for _ in range(groups)]).view(-1, rows // edges, c_in)
    if c_in <= block_diagonal_max_channels and edges > 1:
        blocks = _block_diagonal(blocks, edges)
    return blocks


def _block_diagonal(blocks: torch.Tensor, k: int) -> torch.Tensor:
    """(B*K, C_out, C_in) -> (B, K*C_out, K*C_in), blocks b*K..b*K+K-1 on the diagonal of b."""
    b, c_out, c_in = blocks.shape
    out = blocks.new_zeros(b // k, k, c_out, k, c_in)
    out.diagonal(dim1=1, dim2=3).copy_(blocks.view(b // k, k, c_out, c_in).permute(0, 2, 3, 1))
    return out.view(b // k, k * c_out, k * c_in)


def depthwise_parameter_grads(grad: torch.Tensor, t: int, g: int,
                              kernels: list[int]) -> tuple[torch.Tensor, ...]:
    """The gradient of each of the `t` types' depthwise parameters, (K*C, 1, k, k) with k in
    `kernels`, from that of `depthwise_weights`' output for `g` groups: summed over the groups,
    the unreachable taps' (zero) restored, the zero-padded taps dropped."""
    rows, cols = grad.shape[-2:]
    grad = (grad.reshape(t, g, -1, 1, rows, cols).sum(dim=1) if g > 1
            else grad.reshape(t, -1, 1, rows, cols))
    largest = max(kernels)
    if rows < largest or cols < largest:
        grad = F.pad(grad, ((largest - cols) // 2,) * 2 + ((largest - rows) // 2,) * 2)
    return tuple(part if kernel == largest else _centre(part, kernel)
                 for part, kernel in zip(grad.unbind(), kernels))


def _centre(x: torch.Tensor, k: int) -> torch.Tensor:
    """The central k x k taps of x (..., K, K), copied: a contiguous gradient is what the
    parameter keeps as it is (a strided view would be copied once more)."""
    return F.pad(x, (-((x.shape[-1] - k) // 2),) * 4)


def pointwise_parameter_grads(grad: torch.Tensor, t: int, g: int, k: int
                              ) -> tuple[torch.Tensor, ...]:
    """The gradient of each of the `t` types' pointwise parameters, (K*C_out, C_in, 1, 1),
    from that of `pointwise_blocks`' output for `g` groups and `k` edges: summed over the
    groups; of block-diagonal matrices, the diagonal blocks."""
    if grad.shape[0] == t * g * k:  # one matrix per (type, group, edge)
        c_out, c_in = grad.shape[1:]
        grad = grad.view(t, g, k * c_out, c_in, 1, 1)
        grad = grad.sum(dim=1) if g > 1 else grad.view(t, k * c_out, c_in, 1, 1)
    else:  # block-diagonal over the edges
        c_out, c_in = grad.shape[1] // k, grad.shape[2] // k
        grad = (grad.view(t, g, k, c_out, k, c_in).diagonal(dim1=2, dim2=4).sum(dim=1)
                .permute(0, 3, 1, 2).reshape(t, k * c_out, c_in, 1, 1))
    return grad.unbind()


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, repeat) -> torch.Tensor:
    """A stride-1 'same' depthwise convolution (odd kernel, one filter per output channel) of
    x's channels repeated (`repeat_channels`)."""
    x = repeat_channels(x, repeat)
    return F.conv2d(x, weight, padding=same_padding(weight), groups=x.shape[1])


def depthwise_grads(x, weight, repeat, grad, needs_x: bool, needs_w: bool,
                    onednn_weight_grads: bool):
    """The gradients (input, weight) of `depthwise_conv`, on oneDNN's fast kernels.

    The repeated input is never stored: the weight gradient makes it, the input gradient is
    that of a plain depthwise convolution summed over the copies (oneDNN's kernel for several
    filters per channel is 3-4x slower: 1.4 ms against 0.5 ms at 48 x 48, 16 channels, 5
    filters each). The weight gradient: oneDNN's fast depthwise kernel (jit_dw) serves it only
    for filters at most 3 wide on inputs larger than the filter's reach; otherwise oneDNN
    falls back to generic paths 3-10x slower (measured: 5x5 at 48 x 48 x 120 channels 2.2 ms
    against 0.95 ms here; 3x3 at 2 x 2 x 1920 channels 1.6 ms against 0.2 ms). So it is taken
    from an explicitly padded input, the filter's columns in slices of at most 3 (with
    `onednn_weight_grads`; off the CPU in one call). Exact: the same sums, split by tap.
    Under autocast (grad in a lower dtype) the gradients go back in
    the inputs' own dtypes, as for torch's convolution.
    """
    outer, groups, inner = repeat
    x_dtype, w_dtype = x.dtype, weight.dtype
    x = cast(x, grad.dtype).contiguous(memory_format=torch.channels_last)  # what oneDNN reads
    weight = cast(weight, grad.dtype)
    grad = grad.contiguous(memory_format=torch.channels_last)
    n, channels, h, w = x.shape
    repeated = outer * inner > 1
    grad_x = grad_w = None
    if needs_x:
        # The input gradient reads only the input's shape and layout: no repeat made, the
        # gradient (of the output, as large as the repeated input) stands in for it.
        shape_only = grad if repeated else x
        grad_x = _depthwise_backward(grad, shape_only, weight, same_padding(weight), "input")
        if repeated:  # summed over the copies: (N, H, W, T, G, K, C) -> (N, H, W, G, C)
            copies = memory_view(grad_x.contiguous(memory_format=torch.channels_last),
                                 (n, h, w, outer, groups, inner, channels // groups))
            grad_x = as_channels_last(copies.sum(dim=(3, 5)))
        grad_x = cast(grad_x, x_dtype)
    if needs_w:
        grad_w = cast(_depthwise_weight_grad(x, grad, weight, repeat, onednn_weight_grads),
                      w_dtype)
    return grad_x, grad_w


# The strided views below (`as_strided`, one call where a chain of views takes several) serve
# tensors that autograd does not record, inside the autograd Functions of this file: recorded,
# an `as_strided` would cost a zero-filled copy of its input in the backward pass.


def memory_view(x: torch.Tensor, shape, dims=None) -> torch.Tensor:
    """The memory of x, contiguous in channels-last order, as a contiguous tensor of `shape`
    (as many elements), its dims then permuted to `dims` when given: one call for what would
    be a chain of views."""
    strides = [1]
    for size in reversed(shape[1:]):
        strides.insert(0, strides[0] * size)
    if dims is not None:
        shape, strides = [shape[d] for d in dims], [strides[d] for d in dims]
    return x.as_strided(shape, strides, x.storage_offset())


def as_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A contiguous (N, H, W, ...) tensor as the (N, C, H, W) channels-last view of its memory,
    C the product of the trailing dims (where view, then permute, are two calls)."""
    n, h, w = x.shape[:3]
    return memory_view(x, (n, h, w, math.prod(x.shape[3:])), (0, 3, 1, 2))


def _depthwise_backward(grad, x, weight, padding, wrt: str) -> torch.Tensor:
    """One gradient ("input" or "weight") of a stride-1 depthwise conv, by torch's kernel."""
    mask = [wrt == "input", wrt == "weight", False]
    grads = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], list(padding),
                                                [1, 1], False, [0, 0], x.shape[1], mask)
    return grads[mask.index(True)]


def _depthwise_weight_grad(x, grad, weight, repeat, sliced: bool):
    """The weight gradient of `depthwise_conv` (input x repeated by `repeat`), by oneDNN's fast
    kernel: directly where it applies (or `sliced` is off), else one slice of at most 3 filter
    columns at a time, each the weight gradient of an unpadded convolution over the columns
    its taps read."""
    kh, kw = weight.shape[-2:]
    ph, pw = same_padding(weight)
    height, width = x.shape[-2:]
    if not sliced or (kw <= 3 and min(height, width) > kh - 1):
        return _depthwise_backward(grad, repeat_channels(x, repeat), weight, (ph, pw), "weight")
    x = F.pad(x, (pw, pw, ph, ph))  # padded once, before the repeat (the smaller tensor)
    parts = []
    for first, taps in zip(range(0, kw, 3), weight.split(3, dim=-1)):
        # Taps [first, first + 3) of every filter row; the columns they read, repeated into
        # their own channels-last tensor: given a strided slice, oneDNN's path copies it into
        # another layout first, which took 3-10x as long (0.35 against 0.06-0.15 ms at 52 x
        # 50 x 80 channels).
        columns = repeat_channels(x, repeat, slice(first, first + width + taps.shape[-1] - 1))
        parts.append(_depthwise_backward(grad, columns, taps, (0, 0), "weight"))
    return torch.cat(parts, dim=-1)


def grouped_pointwise(x: torch.Tensor, weight: torch.Tensor, paths: FastPaths) -> torch.Tensor:
    """The 1x1 convolutions of every (type, group, edge) block of C channels, as one `bmm`.

    x: (N, B*C_in, H, W) channels-last; weight: (B, C_out, C_in), one matrix per block
    (`pointwise_blocks`; a block-diagonal one spans several blocks). oneDNN has no fast path
    for grouped 1x1 convolutions (torch loops over the groups in its slow kernel), so the
    blocks become the batch of a `bmm` that reads the channels-last memory through a strided
    view and writes it likewise (below `paths.strided_output_min_rows` rows through one copy,
    which is faster there). Returns (N, B*C_out, H, W) channels-last, in x's dtype (autocast
    off: the caller's dtype, as given).
    """
    with torch.autocast(x.device.type, enabled=False):
        return _blockwise_matmul(x, cast(weight, x.dtype).transpose(1, 2),
                                 paths.strided_output_min_rows)


def pointwise_grads(x, weight, grad, needs_x: bool, needs_w: bool, paths: FastPaths):
    """The gradients (input, weight) of `grouped_pointwise`, each in its input's dtype."""
    x_dtype, w_dtype = x.dtype, weight.dtype
    # The gradient of a stage that ends in a concatenation (stage 2) is a slice of its
    # channels: read in place, not copied.
    grad = pixel_rows(grad)
    weight = cast(weight, grad.dtype)
    grad_x = grad_w = None
    if needs_x:
        grad_x = cast(_blockwise_matmul(grad, weight, paths.strided_output_min_rows), x_dtype)
    if needs_w:
        x = pixel_rows(cast(x, grad.dtype))
        c_out, c_in = weight.shape[1:]
        grad_w = cast(torch.bmm(_blocks(grad, c_out).transpose(1, 2), _blocks(x, c_in)),
                      w_dtype)
    return grad_x, grad_w


def pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) if its memory is one row of unit-stride channels per pixel, the rows
    evenly spaced (channels-last, or a channel slice of a channels-last tensor); else its
    channels-last copy."""
    n, channels, h, w = x.shape
    step = _pixel_step(x)
    for size, stride, expected in ((w, x.stride(3), step), (h, x.stride(2), step * w),
                                   (n, x.stride(0), step * h * w), (channels, x.stride(1), 1)):
        if size > 1 and stride != expected:
            return x.contiguous(memory_format=torch.channels_last)
    return x if step >= channels else x.contiguous(memory_format=torch.channels_last)


def _pixel_step(x: torch.Tensor) -> int:
    """The elements from one pixel's channels to the next's, of a `pixel_rows` tensor."""
    n, channels, h, w = x.shape
    return x.stride(3) if w > 1 else x.stride(2) if h > 1 else x.stride(0) if n > 1 else channels


def _blocks(x: torch.Tensor, c: int) -> torch.Tensor:
    """(N, B*C, H, W) with one row of channels per pixel (`pixel_rows`) -> the (B, N*H*W, C)
    view of its memory (`memory_view` serves contiguous memory only; these rows may be
    further apart than their channels)."""
    n, channels, h, w = x.shape
    return x.as_strided((channels // c, n * h * w, c), (c, _pixel_step(x), 1),
                        x.storage_offset())


def _blockwise_matmul(x: torch.Tensor, weight: torch.Tensor,
                      strided_output_min_rows: int) -> torch.Tensor:
    """Block b of x's channels times weight[b], (B, C_in, C_out), into a new channels-last
    (N, B*C_out, H, W) tensor (written in place by the bmm from `strided_output_min_rows`
    rows on, else through one copy)."""
    n, _, h, w = x.shape
    blocks, c_in, c_out = weight.shape
    x = _blocks(pixel_rows(x), c_in)
    if n * h * w < strided_output_min_rows:
        return as_channels_last(torch.bmm(x, weight).transpose(0, 1).reshape(n, h, w, -1))
    out = torch.empty(n, blocks * c_out, h, w, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    torch.bmm(x, weight, out=_blocks(out, c_out))
    return out


def channel_shuffle(x: torch.Tensor, parts: int) -> torch.Tensor:
    """PC-DARTS' channel shuffle over the last dim: channel p*(C/parts) + i goes to i*parts + p."""
    if parts == 1:
        return x
    c = x.shape[-1]
    return x.unflatten(-1, (parts, c // parts)).transpose(-1, -2).reshape(*x.shape[:-1], c)


def search_preprocess(direction: int, c_in: int, channels: int) -> nn.Module:
    """How a search cell brings an incoming state of `c_in` channels to its `channels`, by
    direction (this level minus the state's): +1 from one level finer, FactorizedReduce; 0,
    ReLU-conv1x1-BN; -1 from one level coarser (or H(l-2) from wherever it sits), resized to
    the cell's size first. Affine-free, as every batch norm of the search."""
    if direction > 0:
        return FactorizedReduce(c_in, channels, affine=False)
    if direction == 0:
        return ReLUConvBN(c_in, channels, 1, affine=False)
    return ResizeReLUConvBN(c_in, channels, affine=False)


class SearchCell(nn.Module):
    """One node of the trellis: the cell applied to each incoming state, beta-weighted.

    Args:
        steps: blocks per cell (B in the paper's cell, 5).
        block_multiplier: how many of the last blocks are concatenated into the output.
        channels: C = F * 2^level, the width of every block.
        incoming: for each incoming state, (direction, input channels); direction is this
            node's level minus the state's, as `DIRECTIONS` and the retrained cell count it:
            +1, the state comes from one level finer (stride-2 reduction, paper section 5.1),
            0 the same level, -1 one level coarser (bilinear upsampling, then a 1x1 conv).
        prev_prev_channels: channels of H(l-2), the node that `prev_prev_level` picks at
            layer l-2; resized to this level first where it sits at another.
        partial_channels: K of PC-DARTS' partial channel connections; 1 is the paper's cell.
            With K > 1 the operations of every edge see only the first C/K channels of their
            input, the other channels pass unchanged, the two are concatenated and
            channel-shuffled, and each block sums its edges with edge-normalisation weights.
        fast_paths: the `FastPaths` of the operations; None: those of the input's device.
    """

    def __init__(self, steps: int, block_multiplier: int, channels: int,
                 incoming: list[tuple[int, int]], prev_prev_channels: int,
                 partial_channels: int = 1, fast_paths: FastPaths | None = None):
        super().__init__()
        if channels % partial_channels:
            raise ValueError(f"channels {channels} not divisible by partial_channels "
                             f"{partial_channels}")
        self.steps, self.block_multiplier, self.channels = steps, block_multiplier, channels
        self.partial_channels = partial_channels
        self.directions = [d for d, _ in incoming]
        groups = len(incoming)
        self.preprocess = nn.ModuleList(search_preprocess(d, c_in, channels)
                                        for d, c_in in incoming)
        self.preprocess_prev_prev = search_preprocess(-1, prev_prev_channels, channels)
        # State j (0 = H(l-2), 1 = H(l-1), k+1 = block k) is read by blocks max(0, j-1)..steps-1.
        op_channels = channels // partial_channels
        self.prev_prev_ops = SharedSourceOps(op_channels, steps, 1, fast_paths)
        self.source_ops = nn.ModuleList(
            SharedSourceOps(op_channels, steps - max(0, j - 1), groups, fast_paths)
            for j in range(1, steps + 1))

    def forward(self, inputs: list[torch.Tensor], prev_prev: torch.Tensor,
                betas: torch.Tensor, size: tuple[int, int], alphas: list[EdgeWeights]):
        """inputs: the incoming states in `incoming` order; prev_prev: H(l-2) at its level;
        betas: (G,) normalised weights of the incoming transitions; size: this level's (H, W);
        alphas: the normalised alphas by state (`weights_by_state`; with partial channels the
        edge weights folded in). Returns (N, block_multiplier * C, H, W).
        """
        c, groups, parts = self.channels, len(inputs), self.partial_channels
        states = []
        for pre, direction, h in zip(self.preprocess, self.directions, inputs):
            states.append(nhwc(pre(h, size) if direction < 0 else pre(h)))
        n = states[0].shape[0]
        x = torch.stack(states, dim=3)  # (N, H, W, G, C)

        # The blocks not complete yet, summed over the edges read so far: (blocks, N, H, W, G
        # or 1, C), the first block first. Each state's edges join them in one call, and each
        # block, once all its edges are in, is split off (contiguous, block-major). With
        # partial channels the operated part (C/K) and the passed-through part (C - C/K) are
        # summed apart.
        pending: list[torch.Tensor | None] = [None, None]  # operated, passed through

        def read(j: int, state: torch.Tensor, ops: SharedSourceOps):
            """All edges from state j, (N, H, W, G, C), into the blocks that read it."""
            weights = alphas[j]
            op_in = state[..., :c // parts] if parts > 1 else state
            g = op_in.shape[3]
            terms = [ops(to_nchw(op_in.reshape(n, *size, g * op_in.shape[-1])), weights)]
            if parts > 1:  # (k, N, H, W, G, C - C/K), each edge's weight on the rest
                terms.append(state[..., c // parts:] * weights.scale.view(-1, 1, 1, 1, 1, 1))
            for i, term in enumerate(terms):
                pending[i] = term if pending[i] is None else pending[i] + term

        def complete_block() -> torch.Tensor:
            """The first pending block, split off: its state (N, H, W, G, C)."""
            done = []
            for i, sums in enumerate(pending):
                if sums is None:
                    continue
                first, pending[i] = (sums.split([1, len(sums) - 1]) if len(sums) > 1
                                     else (sums, None))
                done.append(first.squeeze(0))
            return done[0] if parts == 1 else channel_shuffle(torch.cat(done, dim=-1), parts)

        read(0, nhwc(self.preprocess_prev_prev(prev_prev, size)).unsqueeze(3), self.prev_prev_ops)
        blocks = []
        for j, ops in enumerate(self.source_ops, start=1):
            # Block j-1 is complete once states 0..j have been read (it is state j+1).
            read(j, x if j == 1 else blocks[-1], ops)
            blocks.append(complete_block())

        # Paper Eq. 6: the beta-weighted sum over incoming states of the output blocks, all
        # at once (stacked, they are the output's channels already: no concatenation after).
        last = torch.stack(blocks[self.steps - self.block_multiplier:], dim=3)
        out = (last * betas.view(groups, 1)).sum(dim=4)  # (N, H, W, mult, C)
        return to_nchw(out.view(n, *size, -1))  # (N, mult*C, H, W), channels-last
