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
  (`SeparableConv`); the dense atrous convolutions of all edges are one convolution, the
  groups seen as more images; the parameter-free operations (pools followed by affine-free
  BN, identity) give the same tensor for every edge and are mixed by one small matmul,
  edge-major;
- depthwise gradients on oneDNN's fast kernels (`depthwise_grads`);
- each edge's operation weight (alpha) is the scale of the batch norm that ends the
  operation, so the weighted sum of Eq. 2 costs no multiplications of its own;
- the H(l-2) input once, since it is the same tensor for all incoming states of a node;
- `none` not at all (its contribution is zero; its alpha still gets a gradient through the
  softmax);
- any operation of the table (`modeling.operations.OPS`) without a fast path here
  (`FALLBACK_OPS`) as the plain supernet runs it: one module per edge, called once per edge and
  incoming state. Adding an operation to the table gives a correct search, slower only for it.

Channel layout of a state read by `k` edges with `G` groups: (N, G*C) in, (N, G, k, C) out
(with the parameter-free terms apart, (k, N, H, W, G, C)).
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
SEP_KERNEL = 5  # the larger depthwise kernel of SEP_CONVS
ATROUS_CONVS = ("atrous_conv_3x3", "atrous_conv_5x5")
PARAMETER_FREE = ("max_pool_3x3", "avg_pool_3x3", "skip_connect")  # the order of `stacked`
# The operations with a fast path here; every other operation of the table runs as the plain
# supernet runs it. Both together are the table, exactly.
FAST_OPS = (NONE_OP, *PARAMETER_FREE, *SEP_CONVS, *ATROUS_CONVS)
FALLBACK_OPS = tuple(name for name in PRIMITIVES if name not in FAST_OPS)
if not set(FAST_OPS) <= set(PRIMITIVES):
    raise ImportError(f"modeling/search_cell.py has fast paths for "
                      f"{sorted(set(FAST_OPS) - set(PRIMITIVES))}, which the operation table "
                      f"(modeling/operations.py OPS) no longer has: remove them from FAST_OPS "
                      f"and SharedSourceOps too")


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
    """

    merged_depthwise_max_pixels: int = 16 * 16
    block_diagonal_max_channels: int = 8
    strided_output_min_rows: int = 1024
    onednn_weight_grads: bool = True

    @staticmethod
    def for_device(device: torch.device | str) -> "FastPaths":
        """The defaults of `device`: the CPU's were measured there; elsewhere the oneDNN
        workarounds are off and the thresholds are the CPU's until measured on a GPU."""
        return CPU_FAST_PATHS if torch.device(device).type == "cpu" else OTHER_FAST_PATHS


CPU_FAST_PATHS = FastPaths()
OTHER_FAST_PATHS = FastPaths(onednn_weight_grads=False)


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
        self.sep_conv_bn2 = AffineFreeBN(len(SEP_CONVS) * wide)
        # Dilated convolutions (read by name in `forward`: <type>, <type>_bn).
        self.atrous_conv_3x3 = _conv_weight(k, c, c, 3)
        self.atrous_conv_3x3_bn = AffineFreeBN(wide)
        self.atrous_conv_5x5 = _conv_weight(k, c, c, 5)
        self.atrous_conv_5x5_bn = AffineFreeBN(wide)
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
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _separable(self, x: torch.Tensor, stage: int, names, recompute: bool,
                   paths: FastPaths) -> torch.Tensor:
        """Stage `stage` (1 or 2) of the separable types `names`, every edge, in one call
        (`SeparableConv`; several types: the smaller depthwise filters zero-padded to
        SEP_KERNEL, exact, the padded taps multiply by zero and their gradient is dropped by
        the padding's backward).

        Stage 1 reads r, (N, G*C, H, W): channel (group, channel) feeds one depthwise filter
        per (type, edge), as if it were repeated. Stage 2 reads (N, types*G*k*C, H, W): one
        filter per channel. Both return (N, types*G*k*C, H, W), channels (type, group, edge,
        channel), channels-last.
        """
        g, k, c, t = self.groups, self.num_edges, self.channels, len(names)
        filters = [getattr(self, f"{name}_dw{stage}") for name in names]
        if t > 1:
            filters = [F.pad(f, ((SEP_KERNEL - f.shape[-1]) // 2,) * 4) for f in filters]
        size = filters[0].shape[-2:]
        # Every group (incoming state) uses the same weights: repeat the small tensor.
        depthwise = (torch.stack(filters).view(t, 1, k * c, *size).expand(t, g, k * c, *size)
                     .reshape(t * g * k * c, 1, *size))
        pointwise = torch.stack([getattr(self, f"{name}_pw{stage}").view(k, c, c)
                                 for name in names])  # (types, k, C_out, C_in)
        return SeparableConv.apply(x, reachable_taps(depthwise, 1, x.shape[-2:]), pointwise,
                                   (t, g, k) if stage == 1 else (1, 1, 1), g, recompute, paths)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x: (N, G*C, H, W) channels-last; weights: (k, len(PRIMITIVES)) normalised alphas.

        Returns the mixed operation of every edge (paper Eq. 2) as two terms to add: the
        operations with parameters, (N, H, W, G, k, C), and the parameter-free ones, (k, N, H,
        W, G, C).
        """
        n, _, h, w = x.shape
        g, k, c = self.groups, self.num_edges, self.channels
        paths = self.fast_paths or FastPaths.for_device(x.device)

        def edge_scale(names):  # the ops' weights for every (op, group, edge, channel)
            ops = weights[:, op_columns(names)].t()  # (ops, k), a view in the default order
            return ops.reshape(len(names), 1, k, 1).expand(len(names), g, k, c).reshape(-1)

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
        out, first = None, 0
        for names in calls:
            t = len(names)
            channels = slice(first * g * k * c, (first + t) * g * k * c)  # of the shared BNs
            y = self._separable(r, 1, names, large, paths)
            # Stage 2: per-edge BN, ReLU and depthwise conv, then the pointwise convs again.
            # In place: batch norm's backward needs its input, not its output.
            y = F.relu(self.sep_conv_bn1(y, channels=channels), inplace=True)
            y = self._separable(y, 2, names, large, paths)
            y = self.sep_conv_bn2(y, edge_scale(names), channels=channels)
            y = nhwc(y).view(n, h, w, t, g, k, c)
            y = y.sum(dim=3) if t > 1 else y.squeeze(3)  # (N, H, W, G, k, C)
            out = y if out is None else out + y
            first += t
        # The dense atrous convolutions see the groups as more images (the weights are the
        # same for every group): oneDNN's grouped dense kernels are up to 3x slower.
        r_batch = groups_to_batch(r, g)
        for name in ATROUS_CONVS:
            y = batch_to_groups(same_conv(r_batch, getattr(self, name), ATROUS_DILATION), g)
            out = out + nhwc(getattr(self, f"{name}_bn")(y, edge_scale((name,)))).view(
                n, h, w, g, k, c)
        # Parameter-free operations: one tensor for all k edges, mixed by one small matmul
        # whose output is edge-major, so each edge's term is contiguous (no transposes).
        max_pool = self.max_pool_bn(F.max_pool2d(x, 3, 1, 1))
        avg_pool = self.avg_pool_bn(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        skip = skip_connect(x, self.skip_dropout, self.training)
        stacked = torch.stack([nhwc(t) for t in (max_pool, avg_pool, skip)])  # (3, N, H, W, G*C)
        mix = weights[:, op_columns(PARAMETER_FREE)]  # (k, 3), a view in the default order
        free = torch.mm(mix, stacked.view(len(PARAMETER_FREE), -1)).view(k, n, h, w, g, c)
        # Operations without a fast path, as the plain supernet runs them: every edge's module
        # on every group (incoming state) apart, so batch norm sees one application at a time.
        for name, edge_ops in self.fallback.items():
            y = torch.stack([torch.stack([nhwc(op(part)) for op in edge_ops], dim=3)
                             for part in x.split(c, dim=1)], dim=3)  # (N, H, W, G, k, C)
            out = out + y * weights[:, OP[name]].view(k, 1)
        return out, free


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
    if groups == 1:
        return x
    n, gc, h, w = x.shape
    y = nhwc(x).view(n, h, w, groups, gc // groups).permute(0, 3, 1, 2, 4).contiguous()
    return to_nchw(y.view(n * groups, h, w, gc // groups))


def batch_to_groups(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of `groups_to_batch`: (N*G, C, H, W) -> (N, G*C, H, W), channels-last."""
    if groups == 1:
        return x
    ng, c, h, w = x.shape
    y = nhwc(x).view(ng // groups, groups, h, w, c).permute(0, 2, 3, 1, 4).contiguous()
    return to_nchw(y.view(ng // groups, h, w, groups * c))


def same_conv(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """A dense stride-1 'same' convolution on its reachable taps (`reachable_taps`)."""
    weight = reachable_taps(weight, dilation, x.shape[-2:])
    return F.conv2d(x, weight, padding=same_padding(weight, dilation), dilation=dilation)


def reachable_taps(weight: torch.Tensor, dilation: int, size) -> torch.Tensor:
    """The taps of an odd `weight` that can read inside an input of `size` (H, W).

    A tap at offset o reads position p + o, outside the input for every p once |o| >= size; on
    coarse levels of small crops (2 x 2 at stride 32 of a 64 crop) a dilated 5x5 then reduces
    to its centre. Skipping the others is exact: they multiply zeros, and their gradient is
    zero too. `weight` itself when every tap can read inside.
    """
    kh, kw = weight.shape[-2:]
    ch, cw = (kh - 1) // 2, (kw - 1) // 2
    rh, rw = min(ch, (size[0] - 1) // dilation), min(cw, (size[1] - 1) // dilation)
    if rh < ch or rw < cw:
        weight = weight[:, :, ch - rh:ch + rh + 1, cw - rw:cw + rw + 1]
    return weight


def same_padding(weight: torch.Tensor, dilation: int = 1) -> tuple[int, int]:
    """The padding of a stride-1 'same' convolution with the odd `weight` at `dilation`."""
    return dilation * (weight.shape[-2] // 2), dilation * (weight.shape[-1] // 2)


def repeat_channels(x: torch.Tensor, repeat: tuple[int, int, int]) -> torch.Tensor:
    """(N, G*C, H, W) -> (N, T*G*K*C, H, W) channels-last, channel (t, g, k, c) a copy of
    x's channel (g, c); `repeat` = (T, G, K). x itself when T = K = 1."""
    outer, groups, inner = repeat
    if outer == inner == 1:
        return x
    n, channels, h, w = x.shape
    c = channels // groups
    y = nhwc(x).view(n, h, w, 1, groups, 1, c).expand(n, h, w, outer, groups, inner, c)
    return to_nchw(y.reshape(n, h, w, outer * groups * inner * c))


class SeparableConv(torch.autograd.Function):
    """One stage of the separable convolutions of every edge: the depthwise convolution of
    x's channels repeated by `repeat` (`depthwise_conv`), then the 1x1 convolution of every
    (type, group, edge) block (`grouped_pointwise`).

    x: (N, G*C, H, W) channels-last; dw_weight: (T*G*K*C, 1, kh, kw), odd; pw_weight: (T, K,
    C_out, C_in); returns (N, T*G*K*C_out, H, W) channels-last. With `recompute`, only the
    inputs are kept for the backward pass and the depthwise output, as wide as all edges
    together, is computed again there: one depthwise convolution more, for the largest
    tensors of the search that would otherwise be stored. `paths`: the `FastPaths` to take.
    """

    @staticmethod
    def forward(ctx, x, dw_weight, pw_weight, repeat, groups, recompute, paths: FastPaths):
        ctx.repeat, ctx.groups, ctx.paths = repeat, groups, paths
        depthwise = depthwise_conv(x, dw_weight, repeat)
        ctx.save_for_backward(x, dw_weight, pw_weight, *(() if recompute else (depthwise,)))
        return grouped_pointwise(depthwise, pw_weight, groups, paths)

    @staticmethod
    def backward(ctx, grad):
        x, dw_weight, pw_weight, *kept = ctx.saved_tensors
        needs_x, needs_dw, needs_pw = ctx.needs_input_grad[:3]
        # Under autocast the forward ran in the grad's dtype: so does the recomputation.
        depthwise = kept[0] if kept else depthwise_conv(cast(x, grad.dtype),
                                                        cast(dw_weight, grad.dtype), ctx.repeat)
        grad_depthwise, grad_pw = pointwise_grads(depthwise, pw_weight, ctx.groups, grad,
                                                  needs_x or needs_dw, needs_pw, ctx.paths)
        grad_x = grad_dw = None
        if needs_x or needs_dw:
            grad_x, grad_dw = depthwise_grads(x, dw_weight, ctx.repeat, grad_depthwise,
                                              needs_x, needs_dw,
                                              ctx.paths.onednn_weight_grads)
        return grad_x, grad_dw, grad_pw, None, None, None, None


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
        # The input gradient reads only the input's shape and layout: no repeat made.
        shape_only = (torch.empty(n, weight.shape[0], h, w, dtype=grad.dtype,
                                  device=grad.device, memory_format=torch.channels_last)
                      if repeated else x)
        grad_x = _depthwise_backward(grad, shape_only, weight, same_padding(weight), "input")
        if repeated:
            c = channels // groups
            grad_x = to_nchw(nhwc(grad_x).view(n, h, w, outer, groups, inner, c)
                             .sum(dim=(3, 5)).view(n, h, w, channels))
        grad_x = cast(grad_x, x_dtype)
    if needs_w:
        grad_w = cast(_depthwise_weight_grad(x, grad, weight, repeat, onednn_weight_grads),
                      w_dtype)
    return grad_x, grad_w


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
    # Padded once, before the repeat (the smaller tensor); the gradient is used as it is.
    x = repeat_channels(F.pad(x, (pw, pw, ph, ph)).contiguous(memory_format=torch.channels_last),
                        repeat)
    parts = []
    for first in range(0, kw, 3):  # taps [first, first + cols) of every filter row
        cols = min(3, kw - first)
        # Copied into a channels-last tensor here: given the strided slice, oneDNN's path
        # copies it into another layout first, which took 3-10x as long (0.35 against 0.06-0.15
        # ms at 52 x 50 x 80 channels).
        columns = x[..., first:first + width + cols - 1].contiguous(
            memory_format=torch.channels_last)
        parts.append(_depthwise_backward(grad, columns, weight[..., first:first + cols], (0, 0),
                                         "weight"))
    return torch.cat(parts, dim=-1)


def grouped_pointwise(x: torch.Tensor, weight: torch.Tensor, groups: int,
                      paths: FastPaths) -> torch.Tensor:
    """The 1x1 convolutions of every (type, group, edge) block of C channels, as one `bmm`.

    x: (N, T*G*K*C, H, W) channels-last, channels (type, group, edge, channel); weight: (T, K,
    C_out, C_in), the same for every group. oneDNN has no fast path for grouped 1x1
    convolutions (torch loops over the groups in its slow kernel), so the blocks become the
    batch of a `bmm` that reads the channels-last memory through strided views and writes it
    likewise (below `paths.strided_output_min_rows` rows through one copy, which is faster
    there); at up to `paths.block_diagonal_max_channels` channels the K edges of a (type,
    group) are one block-diagonal block (`_per_block`). Returns the same layout with C_out, in x's dtype
    (autocast off: the caller's dtype, as given).
    """
    with torch.autocast(x.device.type, enabled=False):
        per_block = _per_block(cast(weight, x.dtype), groups, paths.block_diagonal_max_channels)
        return _blockwise_matmul(x, per_block.transpose(1, 2), paths.strided_output_min_rows)


def pointwise_grads(x, weight, groups: int, grad, needs_x: bool, needs_w: bool,
                    paths: FastPaths):
    """The gradients (input, weight) of `grouped_pointwise`, each in its input's dtype."""
    x_dtype, w_dtype = x.dtype, weight.dtype
    grad = grad.contiguous(memory_format=torch.channels_last)
    t, k, c_out, c_in = weight.shape
    grad_x = grad_w = None
    per_block = _per_block(cast(weight, grad.dtype), groups, paths.block_diagonal_max_channels)
    if needs_x:
        grad_x = cast(_blockwise_matmul(grad, per_block, paths.strided_output_min_rows), x_dtype)
    if needs_w:
        x = cast(x, grad.dtype).contiguous(memory_format=torch.channels_last)
        block_out, block_in = per_block.shape[1:]
        full = torch.bmm(_blocks(grad, block_out).transpose(1, 2), _blocks(x, block_in))
        if block_out == c_out:
            grad_w = full.view(t, groups, k, c_out, c_in).sum(dim=1)
        else:  # block-diagonal over the edges: the edges' own blocks are its diagonal
            grad_w = (full.view(t, groups, k, c_out, k, c_in).diagonal(dim1=2, dim2=4)
                      .sum(dim=1).permute(0, 3, 1, 2))
        grad_w = cast(grad_w, w_dtype)
    return grad_x, grad_w


def _per_block(weight: torch.Tensor, groups: int, block_diagonal_max_channels: int) -> torch.Tensor:
    """(T, K, C_out, C_in) -> the bmm's weights, (T*G*K, C_out, C_in): block (t, g, k) uses
    weight[t, k]; for C_in <= block_diagonal_max_channels (T*G, K*C_out, K*C_in), block (t, g)
    block-diagonal with weight[t, 0..K-1]."""
    t, k, c_out, c_in = weight.shape
    if c_in <= block_diagonal_max_channels and k > 1:
        eye = torch.eye(k, dtype=weight.dtype, device=weight.device)
        weight = torch.einsum("kl,tkoi->tkoli", eye, weight).reshape(t, 1, k * c_out, k * c_in)
        return weight.expand(t, groups, k * c_out, k * c_in).reshape(-1, k * c_out, k * c_in)
    return weight.unsqueeze(1).expand(t, groups, k, c_out, c_in).reshape(-1, c_out, c_in)


def _blocks(x: torch.Tensor, c: int) -> torch.Tensor:
    """(N, B*C, H, W) channels-last -> the (B, N*H*W, C) view of its memory."""
    n, channels, h, w = x.shape
    return nhwc(x).reshape(n * h * w, channels // c, c).transpose(0, 1)


def _blockwise_matmul(x: torch.Tensor, weight: torch.Tensor,
                      strided_output_min_rows: int) -> torch.Tensor:
    """Block b of x's channels times weight[b], (B, C_in, C_out), into a new channels-last
    (N, B*C_out, H, W) tensor (written in place by the bmm from `strided_output_min_rows`
    rows on, else through one copy)."""
    n, _, h, w = x.shape
    blocks, c_in, c_out = weight.shape
    x = _blocks(x.contiguous(memory_format=torch.channels_last), c_in)
    if n * h * w < strided_output_min_rows:
        return to_nchw(torch.bmm(x, weight).transpose(0, 1).reshape(n, h, w, -1))
    out = torch.empty(n, h, w, blocks * c_out, dtype=x.dtype, device=x.device)
    torch.bmm(x, weight, out=_blocks(to_nchw(out), c_out))
    return to_nchw(out)


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
        for j in range(steps + 1):
            first = max(0, j - 1)
            edges = [edge_offset(b) + j for b in range(first, steps)]
            self.register_buffer(f"edges_{j}", torch.tensor(edges), persistent=False)

    def forward(self, inputs: list[torch.Tensor], prev_prev: torch.Tensor,
                alphas: torch.Tensor, betas: torch.Tensor, size: tuple[int, int],
                edge_weights: torch.Tensor | None = None):
        """inputs: the incoming states in `incoming` order; prev_prev: H(l-2) at its level;
        alphas: (E, ops) normalised; betas: (G,) normalised weights of the incoming
        transitions; size: this level's (H, W); edge_weights: (E,) normalised edge weights
        (partial channels only). Returns (N, block_multiplier * C, H, W).
        """
        c, groups, parts = self.channels, len(inputs), self.partial_channels
        states = []
        for pre, direction, h in zip(self.preprocess, self.directions, inputs):
            states.append(nhwc(pre(h, size) if direction < 0 else pre(h)))
        n = states[0].shape[0]
        x = torch.stack(states, dim=3)  # (N, H, W, G, C)

        # Per block, the sum over its edges, (N, H, W, G or 1, C); with partial channels the
        # operated part (C/K) and the passed-through part (C - C/K) are summed separately.
        blocks: list[torch.Tensor | None] = [None] * self.steps
        passed: list[torch.Tensor | None] = [None] * self.steps

        def add(acc, i, term):
            acc[i] = term if acc[i] is None else acc[i] + term

        def read(j: int, state: torch.Tensor, ops: SharedSourceOps):
            """All edges from state j, (N, H, W, G, C), into the blocks that read it."""
            edges = getattr(self, f"edges_{j}")
            weights = alphas[edges]
            if parts > 1:
                scale = edge_weights[edges]  # (k,)
                weights = weights * scale.unsqueeze(1)  # the mixed op is linear in them
                op_in, rest = state[..., :c // parts], state[..., c // parts:]
            else:
                op_in = state
            g = op_in.shape[3]
            out, free = ops(to_nchw(op_in.reshape(n, *size, g * op_in.shape[-1])), weights)
            # unbind, not out[..., e]: the backward of k selects would zero-fill and add k
            # tensors of out's full size, the backward of unbind stacks once.
            for e, (block, term, free_term) in enumerate(zip(
                    range(max(0, j - 1), self.steps), out.unbind(dim=4), free.unbind(dim=0))):
                add(blocks, block, term)
                add(blocks, block, free_term)
                if parts > 1:
                    add(passed, block, rest * scale[e])

        complete: dict[int, torch.Tensor] = {}

        def state_of_block(b: int) -> torch.Tensor:
            if parts == 1:
                return blocks[b]
            if b not in complete:
                complete[b] = channel_shuffle(torch.cat([blocks[b], passed[b]], dim=-1), parts)
            return complete[b]

        read(0, nhwc(self.preprocess_prev_prev(prev_prev, size)).unsqueeze(3), self.prev_prev_ops)
        for j, ops in enumerate(self.source_ops, start=1):
            # Block j-1 is complete once states 0..j have been read (it is state j+1).
            read(j, x if j == 1 else state_of_block(j - 2), ops)

        # Paper Eq. 6: the beta-weighted sum over incoming states, block by block (the
        # blocks are kept for the backward pass anyway; their concatenation need not be).
        betas = betas.view(groups, 1)
        out = torch.cat([(state_of_block(b) * betas).sum(dim=3)
                         for b in range(self.steps - self.block_multiplier, self.steps)], dim=-1)
        return to_nchw(out)  # (N, mult*C, H, W), channels-last
