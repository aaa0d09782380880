"""The supernet: shapes, gradients, parameter split, beta normalisation, and equality of the
fast supernet with the plain one (one module per edge, modeling/plain_supernet.py)."""
import copy

import numpy as np
import pytest
import torch

from modeling import search_cell
from modeling.search_cell import CPU_FAST_PATHS, OTHER_FAST_PATHS, FastPaths
from modeling.operations import PRIMITIVES
from modeling.search_space import NUM_LEVELS, normalize_betas, num_edges, transition_mask
from modeling.supernet import AutoDeepLabSearch, SupernetConfig, arch_entropy
from modeling.plain_supernet import copy_fast_to_plain, corresponding_parameters

TINY = dict(num_classes=3, num_layers=4, filter_multiplier=2, block_multiplier=3, steps=3,
            stem_widths=(4, 8), aspp_channels=4)


def tiny_model(seed=0, fast_paths=None, **overrides):
    torch.manual_seed(seed)
    return AutoDeepLabSearch(SupernetConfig(**{**TINY, **overrides}), fast_paths=fast_paths)


def test_output_shape_and_every_level_shape():
    model = tiny_model()
    shapes = {}
    for key, cell in model.cells.items():
        cell.register_forward_hook(lambda mod, inp, out, key=key: shapes.__setitem__(key, out.shape))
    x = torch.randn(2, 3, 40, 36)
    assert model(x).shape == (2, 3, 40, 36)
    cfg = model.config
    # Level s is ceil(H / (4 * 2^s)); layer l has levels 0..min(l+1, 3).
    for layer in range(cfg.num_layers):
        for level in range(NUM_LEVELS):
            key = f"{layer}_{level}"
            if level > layer + 1:
                assert key not in shapes
                continue
            h, w = 10, 9
            for _ in range(level):
                h, w = (h + 1) // 2, (w + 1) // 2
            assert shapes[key] == (2, cfg.block_multiplier * cfg.filter_multiplier * 2 ** level, h, w)


def test_every_parameter_gets_a_gradient_and_no_nan():
    model = tiny_model()
    x = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 3, (2, 32, 32))
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_arch_and_weight_parameters_are_disjoint_and_complete():
    model = tiny_model()
    arch = {id(p) for p in model.arch_parameters()}
    weights = {id(p) for p in model.weight_parameters()}
    assert not arch & weights
    assert arch | weights == {id(p) for p in model.parameters()}
    assert model.alphas.shape == (num_edges(3), len(PRIMITIVES))
    assert model.betas.shape == (4, NUM_LEVELS, 3)
    state = model.state_dict()
    assert "alphas" in state and "betas" in state


def test_beta_normalisation_per_source_node():
    torch.manual_seed(1)
    layers = 12
    mask = torch.from_numpy(transition_mask(layers))
    betas = torch.randn(layers, NUM_LEVELS, 3) * 3
    probs = normalize_betas(betas, mask)
    assert (probs[~mask] == 0).all()
    sums = probs.sum(-1)
    exists = mask.any(-1)
    torch.testing.assert_close(sums[exists], torch.ones(int(exists.sum())))
    assert (sums[~exists] == 0).all()
    # Border nodes: the stem moves only to levels 0 and 1; level 0 cannot go up, level 3
    # cannot go down; nodes that do not exist (level > layer) send nothing.
    assert mask[0].tolist() == [[False, True, True], [False] * 3, [False] * 3, [False] * 3]
    assert not mask[:, 0, 0].any() and not mask[:, 3, 2].any()
    assert mask[1, :2].any(-1).all() and not mask[1, 2:].any()
    # Softmax over exactly the valid directions, no other rescaling (paper section 3).
    b = betas[5, 0]
    expected = torch.softmax(b[1:], 0)
    torch.testing.assert_close(probs[5, 0, 1:], expected)


# The fast paths' size thresholds at their defaults and at both extremes, so that every branch
# runs at these tiny sizes: which levels run both depthwise kernels as one call, which
# pointwise blocks are block-diagonal, which matmuls write a strided output; the oneDNN
# workarounds on and off.
THRESHOLDS = {
    "defaults": None,  # those of the test's device
    "small levels merged": FastPaths(merged_depthwise_max_pixels=30),
    "every branch low, no oneDNN workarounds": FastPaths(0, 0, 0, onednn_weight_grads=False,
                                                         atrous_groups_as_images=False),
    "every branch high": FastPaths(10 ** 9, 10 ** 9, 10 ** 9, onednn_weight_grads=True,
                                   atrous_groups_as_images=True),
    "other devices' paths": OTHER_FAST_PATHS,
}


@pytest.mark.parametrize("partial_channels", [1, 2])
@pytest.mark.parametrize("thresholds", THRESHOLDS.values(), ids=THRESHOLDS.keys())
def test_fast_supernet_equals_plain_supernet(partial_channels, thresholds, device):
    config = dict(TINY, filter_multiplier=2 * partial_channels, partial_channels=partial_channels)
    model = tiny_model(seed=3, fast_paths=thresholds, **config).double().to(device)
    with torch.no_grad():  # non-trivial architecture weights
        for p in model.arch_parameters():
            p.normal_(0, 1)
    plain = AutoDeepLabSearch(SupernetConfig(**config, implementation="plain")).double().to(device)
    copy_fast_to_plain(model, plain)
    x = torch.randn(2, 3, 48, 40, dtype=torch.float64).to(device)
    target = torch.randint(0, 3, (2, 48, 40)).to(device)
    loss_fast = torch.nn.functional.cross_entropy(model(x), target)
    loss_plain = torch.nn.functional.cross_entropy(plain(x), target)
    torch.testing.assert_close(loss_fast, loss_plain, rtol=1e-9, atol=1e-10)
    loss_fast.backward()
    loss_plain.backward()
    fast_params, plain_params = dict(model.named_parameters()), dict(plain.named_parameters())
    pairs = corresponding_parameters(model, plain)
    assert sorted(p for _, _, p in pairs) == sorted(plain_params)  # each plain one, once
    for fast_name, rows, plain_name in pairs:
        torch.testing.assert_close(fast_params[fast_name].grad[rows], plain_params[plain_name].grad,
                                   rtol=1e-7, atol=1e-9, msg=lambda m, n=plain_name: f"{n}: {m}")
    # Every fast parameter's rows are some plain parameter's: nothing left out.
    covered = {name: 0 for name in fast_params}
    for fast_name, rows, plain_name in pairs:
        covered[fast_name] += plain_params[plain_name].shape[0]
    assert covered == {name: p.shape[0] for name, p in fast_params.items()}
    assert (model.edge_logits is not None) == (partial_channels > 1)


def repeated(x, repeat):
    """x (N, G*C, H, W) -> channel (t, g, k, c) = x's (g, c), written out plainly."""
    outer, groups, inner = repeat
    n, channels, h, w = x.shape
    c = channels // groups
    return (x.reshape(n, 1, groups, 1, c, h, w).expand(n, outer, groups, inner, c, h, w)
            .reshape(n, outer * groups * inner * c, h, w))


def test_separable_running_statistics_same_whether_types_run_together_or_apart():
    # Apart (large levels), each type's batch norms update a slice of the shared buffers.
    x = torch.randn(2, 3, 48, 40)
    stats = []
    for merged_max_pixels in (10 ** 6, 0):
        model = tiny_model(seed=3, fast_paths=FastPaths(merged_max_pixels))
        model(x)
        stats.append({k: v for k, v in model.state_dict().items()
                      if "sep_conv_bn" in k or "weighted_bn" in k})
    assert stats[0].keys() == stats[1].keys() and stats[0]
    for key, value in stats[0].items():
        torch.testing.assert_close(stats[1][key], value, msg=key)
        initial = 0.0 if key.endswith("running_mean") else 1.0
        assert not torch.allclose(value, torch.full_like(value, initial)), key


def pointwise_reference(x, weight, groups):
    """Block (t, g, k) of x's channels times weight[t, k], by einsum on NCHW."""
    t, k, c_out, c_in = weight.shape
    n, _, h, w = x.shape
    blocks = x.reshape(n, t, groups, k, c_in, h, w)
    return torch.einsum("ntgkihw,tkoi->ntgkohw", blocks, weight).reshape(n, -1, h, w)


def separable_reference(x, depthwise, pointwise, stage, groups):
    """Plain torch: each type's filters zero-padded to the largest and repeated per group,
    stage 1's input repeated per (type, edge), torch's depthwise convolution, then the
    pointwise blocks by einsum."""
    types, kernel = len(depthwise), max(w.shape[-1] for w in depthwise)
    filters = torch.stack([torch.nn.functional.pad(w, ((kernel - w.shape[-1]) // 2,) * 4)
                           for w in depthwise])  # (T, K*C, 1, k, k)
    filters = filters.unsqueeze(1).expand(types, groups, *filters.shape[1:]).reshape(
        -1, 1, kernel, kernel)
    c_out, c_in = pointwise[0].shape[:2]
    edges = depthwise[0].shape[0] // c_in
    if stage == 1:
        x = repeated(x, (types, groups, edges))
    y = torch.nn.functional.conv2d(x, filters, padding=kernel // 2, groups=x.shape[1])
    return pointwise_reference(y, torch.stack([w.view(edges, c_out // edges, c_in)
                                               for w in pointwise]), groups)


def separable_inputs(stage, types, groups, edges, channels, size, kernel, dtype, device="cpu"):
    """x and each type's parameters as SharedSourceOps holds them; with two types, the first
    type's filters 2 smaller than `kernel` (as sep_conv_3x3 beside sep_conv_5x5)."""
    x = torch.randn(2, (1 if stage == 1 else types * edges) * groups * channels, *size,
                    dtype=dtype).to(device).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    kernels = [max(1, kernel - 2), kernel][-types:]
    depthwise = [torch.randn(edges * channels, 1, k, k, dtype=dtype).to(device).requires_grad_()
                 for k in kernels]
    pointwise = [torch.randn(edges * channels, channels, 1, 1, dtype=dtype).to(
        device).requires_grad_() for _ in range(types)]
    stage_spec = dict(types=types, groups=groups, edges=edges, repeat=stage == 1)
    return x, depthwise, pointwise, stage_spec


def separable(x, depthwise, pointwise, spec, recompute, paths):
    stage = search_cell.SeparableStage(**spec, recompute=recompute, paths=paths)
    return search_cell.SeparableConv.apply(x, stage, *depthwise, *pointwise)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("types,groups,edges,channels", [
    (1, 1, 1, 6), (2, 3, 2, 2), (1, 1, 3, 2),  # block-diagonal pointwise (C <= 8)
    (2, 2, 2, 10)])  # one pointwise block per edge
@pytest.mark.parametrize("size,kernel", [((2, 2), 3), ((4, 4), 5), ((5, 7), 5), ((9, 6), 3),
                                         ((6, 8), 5), ((1, 1), 1), ((2, 3), 5)])
def test_separable_conv_equals_torchs_depthwise_then_einsum(size, kernel, types, groups, edges,
                                                            channels, stage, recompute, device):
    # Covers oneDNN's own depthwise weight gradient (3 wide, large enough input) and the split
    # one, filters cut to their reachable taps, a repeated input's gradient summed over the
    # copies, both pointwise paths, the depthwise output kept or computed again in the
    # backward pass, and each parameter's gradient: summed over the groups, the zero-padded
    # taps of the smaller filters dropped.
    torch.manual_seed(0)
    x, depthwise, pointwise, spec = separable_inputs(stage, types, groups, edges, channels,
                                                     size, kernel, torch.float64, device)
    y = separable(x, depthwise, pointwise, spec, recompute, FastPaths.for_device(device))
    ref = separable_reference(x, depthwise, pointwise, stage, groups)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref)
    grad = torch.randn_like(ref)
    inputs = (x, *depthwise, *pointwise)
    for mine, theirs in zip(torch.autograd.grad(y, inputs, grad),
                            torch.autograd.grad(ref, inputs, grad)):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("size,kernel", [((4, 4), 5), ((9, 7), 5), ((2, 2), 3), ((6, 5), 3)])
@pytest.mark.parametrize("repeat", [(2, 1, 1), (2, 3, 2), (1, 1, 1)])
def test_depthwise_weight_grad_in_slices_equals_one_call(size, kernel, repeat, device):
    # The oneDNN workaround (filter columns in slices of at most 3, each slice's input
    # repeated on its own) against the plain call that other devices take: the same sums,
    # split by tap.
    torch.manual_seed(0)
    outer, groups, inner = repeat
    x = torch.randn(2, groups * 3, *size, dtype=torch.float64).to(device).contiguous(
        memory_format=torch.channels_last)
    wide = outer * groups * inner * 3
    weight = torch.randn(wide, 1, kernel, kernel, dtype=torch.float64).to(device)
    grad = torch.randn(2, wide, *size, dtype=torch.float64).to(device)
    sliced = search_cell._depthwise_weight_grad(x, grad, weight, repeat, sliced=True)
    plain = search_cell._depthwise_weight_grad(x, grad, weight, repeat, sliced=False)
    torch.testing.assert_close(sliced, plain)


def test_repeat_channels_equals_the_plain_repeat_and_cuts_columns():
    x = torch.randn(2, 3 * 4, 5, 7).contiguous(memory_format=torch.channels_last)
    for repeat in ((2, 3, 5), (1, 3, 2), (1, 1, 1)):
        plain = repeated(x, repeat)
        mine = search_cell.repeat_channels(x, repeat)
        assert mine.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(mine, plain, rtol=0, atol=0)
        cut = search_cell.repeat_channels(x, repeat, slice(2, 6))
        assert cut.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(cut, plain[..., 2:6], rtol=0, atol=0)


def test_separable_conv_recomputing_keeps_only_its_inputs_and_weights():
    x, depthwise, pointwise, spec = separable_inputs(1, 2, 2, 3, 4, (6, 6), 5, torch.float32)
    wide = (2, 2 * 2 * 3 * 4, 6, 6)  # the depthwise output, as wide as every (type, edge)
    for recompute in (True, False):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                      lambda t: t):
            separable(x, depthwise, pointwise, spec, recompute, CPU_FAST_PATHS)
        assert saved[0].data_ptr() == x.data_ptr()
        # The weights as the convolutions read them: the filters of every (type, group,
        # edge) and the pointwise matrices, small beside the activations.
        assert [tuple(t.shape) for t in saved[1:3]] == [(2 * 2 * 3 * 4, 1, 5, 5),
                                                        (2 * 2, 3 * 4, 3 * 4)]
        assert [tuple(t.shape) for t in saved[3:]] == ([] if recompute else [wide])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("stage", [1, 2])
def test_separable_conv_under_autocast_matches_torchs(stage, recompute, dtype, device):
    # Autocast (--amp, on CUDA in practice; the CPU's autocast exercises the same casts): the
    # output in the autocast dtype, each gradient in its input's dtype.
    torch.manual_seed(0)
    x, depthwise, pointwise, spec = separable_inputs(stage, 2, 2, 2, 4, (6, 6), 5,
                                                     torch.float32, device)
    with torch.autocast(device.type, dtype=dtype):
        y = separable(x, depthwise, pointwise, spec, recompute, FastPaths.for_device(device))
    assert y.dtype == dtype
    grad = torch.randn(y.shape).to(device)
    inputs = (x, *depthwise, *pointwise)
    mine = torch.autograd.grad(y, inputs, grad.to(y.dtype))
    theirs = torch.autograd.grad(separable_reference(x, depthwise, pointwise, stage, 2), inputs,
                                 grad)
    for a, b in zip(mine, theirs):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-1)


@pytest.mark.parametrize("types,groups,edges,c_in,c_out", [
    (2, 3, 5, 4, 4), (1, 1, 2, 3, 5), (2, 2, 1, 2, 2),  # block-diagonal over the edges (C <= 8)
    (2, 2, 3, 10, 9)])  # one block per edge
def test_grouped_pointwise_and_its_gradients_equal_einsum(types, groups, edges, c_in, c_out,
                                                          device):
    torch.manual_seed(0)
    x = torch.randn(2, types * groups * edges * c_in, 5, 3, dtype=torch.float64).to(
        device).contiguous(memory_format=torch.channels_last).requires_grad_()
    ws = [torch.randn(edges * c_out, c_in, 1, 1, dtype=torch.float64).to(device).requires_grad_()
          for _ in range(types)]
    paths = FastPaths.for_device(device)
    blocks = search_cell.pointwise_blocks(ws, groups, edges, paths.block_diagonal_max_channels)
    y = search_cell.grouped_pointwise(x, blocks.detach(), paths)
    ref = pointwise_reference(x, torch.stack([w.view(edges, c_out, c_in) for w in ws]), groups)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref)
    grad = torch.randn_like(ref)
    grad_x, grad_blocks = search_cell.pointwise_grads(x, blocks.detach(), grad, True, True,
                                                      paths)
    mine = (grad_x, *search_cell.pointwise_parameter_grads(grad_blocks, types, groups, edges))
    for a, b in zip(mine, torch.autograd.grad(ref, (x, *ws), grad)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("size", [(5, 3), (4, 1), (1, 1)])
def test_pointwise_grads_read_a_channel_slice_in_place(size, device):
    # Stage 2's output gradient arrives as a channel slice of the concatenation's gradient:
    # read where it lies (`pixel_rows`), with the same result as from its copy.
    torch.manual_seed(0)
    types, groups, edges, c = 2, 3, 2, 4
    width = types * groups * edges * c
    x = torch.randn(2, width, *size, dtype=torch.float64).to(device).contiguous(
        memory_format=torch.channels_last)
    blocks = torch.randn(types * groups * edges, c, c, dtype=torch.float64).to(device)
    whole = torch.randn(2, 3 * width, *size, dtype=torch.float64).to(device).contiguous(
        memory_format=torch.channels_last)
    grad = whole[:, width:2 * width]
    assert search_cell.pixel_rows(grad) is grad
    paths = FastPaths.for_device(device)
    mine = search_cell.pointwise_grads(x, blocks, grad, True, True, paths)
    copied = search_cell.pointwise_grads(x, blocks, grad.clone(memory_format=torch.channels_last),
                                         True, True, paths)
    for a, b in zip(mine, copied):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Not one row of channels per pixel: copied first.
    nchw = grad.contiguous()
    assert search_cell.pixel_rows(nchw).is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(search_cell.pointwise_grads(x, blocks, nchw, True, True, paths), copied):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["one batch norm per separable type",
                                    "one batch norm per type ending the weighted ops"])
def test_checkpoints_with_earlier_batch_norm_layouts_still_load(layout):
    model = tiny_model(seed=5)
    model(torch.randn(2, 3, 32, 32))  # running statistics that are not the initial ones
    state = model.state_dict()
    # The layouts written before the types shared batch norms: the last batch norm of each
    # operation with parameters its own (both separable types one, or each type its own),
    # and the separable types' first either shared or one per type.
    per_type = layout.startswith("one batch norm per separable")
    old = {}
    for key, value in state.items():
        module, _, rest = key.rpartition(".weighted_bn.")
        if module:
            sep, *atrous = value.split([len(value) // 2, len(value) // 4, len(value) // 4])
            old[f"{module}.sep_conv_bn2.{rest}"] = sep
            for name, part in zip(search_cell.ATROUS_CONVS, atrous):
                old[f"{module}.{name}_bn.{rest}"] = part
        else:
            old[key] = value
    if per_type:
        for key in [k for k in old if ".sep_conv_bn" in k]:
            module, stage_stat = key.split(".sep_conv_")
            for name, half in zip(search_cell.SEP_CONVS, old.pop(key).chunk(2)):
                old[f"{module}.{name}_{stage_stat}"] = half
    assert len(old) > len(state)
    rebuilt = tiny_model(seed=6)
    rebuilt.load_state_dict(old)
    for key, value in rebuilt.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)


def test_partial_channels_operate_on_a_kth_of_the_channels():
    full, partial = tiny_model(filter_multiplier=4), tiny_model(filter_multiplier=4,
                                                                partial_channels=4)
    ops_full = full.cells["0_0"].source_ops[0].atrous_conv_5x5
    ops_partial = partial.cells["0_0"].source_ops[0].atrous_conv_5x5
    assert ops_partial.shape[0] * 4 == ops_full.shape[0]
    assert ops_partial.shape[1] * 4 == ops_full.shape[1]
    assert len(partial.arch_parameters()) == 3 and len(full.arch_parameters()) == 2
    with pytest.raises(ValueError, match="partial_channels must divide"):
        tiny_model(filter_multiplier=4, partial_channels=3)


@pytest.mark.parametrize("merged_max_pixels", [None, 0])  # 0: every level is a large one
def test_checkpoint_cells_gives_identical_gradients(merged_max_pixels, device):
    # Large levels compute their depthwise outputs again in the backward pass, also inside
    # the checkpoint's recomputation.
    paths = None if merged_max_pixels is None else FastPaths(merged_max_pixels)
    model = tiny_model(seed=4, fast_paths=paths).double().to(device)
    other = copy.deepcopy(model)
    other.checkpoint_cells = True
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64).to(device)
    model(x).square().mean().backward()
    other(x).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), other.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m, name=name: f"{name}: {m}")


def test_entropy_is_maximal_at_uniform_init():
    model = tiny_model()
    with torch.no_grad():
        model.alphas.zero_()
        model.betas.zero_()
    alpha_h, beta_h = arch_entropy(model)
    assert alpha_h == pytest.approx(np.log(len(PRIMITIVES)), rel=1e-5)
    assert 0 < beta_h <= np.log(3)


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_factorized_reduce_equals_two_offset_stride2_convs(size):
    """Brute force: the two 1x1 stride-2 convs (second one offset by a pixel) written out,
    on a narrow channels-last input (c_in < 8, where oneDNN's stride-2 backward once broke)."""
    from modeling.operations import FactorizedReduce
    torch.manual_seed(0)
    op = FactorizedReduce(4, 6).train()
    x = torch.randn(2, 4, *size).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = op(x)
    grads = torch.autograd.grad(out.pow(2).sum(), [x, *op.parameters()])

    x_ref = x.detach().contiguous().requires_grad_()
    relu = torch.relu(x_ref)
    h, w = size
    shifted = torch.nn.functional.pad(relu[:, :, 1:, 1:], (0, w % 2, 0, h % 2))
    with torch.backends.mkldnn.flags(enabled=False):
        a = torch.nn.functional.conv2d(relu, op.conv_1.weight, stride=2)
        b = torch.nn.functional.conv2d(shifted, op.conv_2.weight, stride=2)
    ref = torch.nn.functional.batch_norm(torch.cat([a, b], 1), None, None, op.bn.weight,
                                         op.bn.bias, training=True)
    grads_ref = torch.autograd.grad(ref.pow(2).sum(), [x_ref, *op.parameters()])
    assert out.shape == (2, 6, (h + 1) // 2, (w + 1) // 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


def test_op_columns_are_a_view_where_consecutive_else_indices():
    assert search_cell.op_columns(search_cell.PARAMETER_FREE) == slice(1, 4)
    assert search_cell.op_columns(search_cell.SEP_CONVS) == slice(4, 6)
    assert search_cell.op_columns(("max_pool_3x3", "sep_conv_3x3")) == [1, 4]


@pytest.mark.parametrize("implementation", ["fast", "plain"])
def test_skip_dropout_drops_only_skip_connect_and_only_while_training(implementation):
    skip = PRIMITIVES.index("skip_connect")
    x = torch.randn(2, 3, 24, 24)

    def run(rate, train, only_skip):
        model = tiny_model(implementation=implementation)
        with torch.no_grad():
            if only_skip:  # every edge all skip_connect (others' weights ~1e-9)
                model.alphas.fill_(-20.0)
                model.alphas[:, skip] = 20.0
            else:  # skip_connect never
                model.alphas[:, skip] = -40.0
        model.set_skip_dropout(rate)
        model.train(train)
        torch.manual_seed(1)
        return model(x)

    for only_skip in (True, False):
        assert torch.equal(run(0.5, False, only_skip), run(0.0, False, only_skip))
    # Training: a dropped skip connection changes the output; with skip_connect weighing nothing
    # the dropout has nothing to act on.
    assert not torch.allclose(run(0.5, True, True), run(0.0, True, True))
    assert torch.allclose(run(0.5, True, False), run(0.0, True, False), atol=1e-6)
    model = tiny_model(implementation=implementation)
    with pytest.raises(ValueError, match="skip dropout"):
        model.set_skip_dropout(1.0)
