"""The cells as the released model builds them (tensorflow/models, research/deeplab/core,
nas_cell.py and nas_network.py), and the inputs search and retraining give every cell.

The down-cell reference below is written from that description with plain functional calls:
H(l-1) unresized, H(l-2) resized (bilinear, corners aligned) to H(l-1)'s size, both
ReLU-conv1x1-BN at that finer size, stride 2 only in the operations that read input 0 or 1.
"""
import random

import pytest
import torch
import torch.nn.functional as F

from modeling.decoding import decode_network_path
from modeling.genotypes import Genotype
from modeling.retrain_net import AutoDeepLab, RetrainCell, RetrainConfig
from modeling.operations import PRIMITIVES
from modeling.search_space import NUM_LEVELS, transition_mask
from modeling.supernet import AutoDeepLabSearch, SupernetConfig

CHOOSABLE = [op for op in PRIMITIVES if op != "none"]


def resize_aligned(x, size):
    """Bilinear resize with corners aligned, from its definition: output pixel j reads the
    input at j * (n_in - 1) / (n_out - 1)."""
    for dim, n_out in ((2, size[0]), (3, size[1])):
        n_in = x.shape[dim]
        if n_in == n_out:
            continue
        pos = torch.arange(n_out, dtype=x.dtype) * ((n_in - 1) / max(n_out - 1, 1))
        lo = pos.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = (pos - lo.to(x.dtype)).view([-1 if d == dim else 1 for d in range(4)])
        x = x.index_select(dim, lo) * (1 - frac) + x.index_select(dim, hi) * frac
    return x


def bn(x, module):
    return F.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias,
                        False, 0.0, module.eps)


def relu_conv_bn(x, module):
    _, conv, norm = module.op
    return bn(F.conv2d(F.relu(x), conv.weight, stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation), norm)


def apply_op(name, module, x, stride):
    if name == "max_pool_3x3":
        return F.max_pool2d(x, 3, stride, 1)
    if name == "avg_pool_3x3":
        return F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
    if name == "skip_connect":
        if stride == 1:
            return x
        # DARTS' FactorizedReduce: two 1x1 stride-2 convs at offsets (0, 0) and (1, 1).
        r = F.relu(x)
        h, w = r.shape[-2:]
        odd = F.pad(r, (0, 1, 0, 1))[:, :, 1:, 1:]
        out = torch.cat([F.conv2d(r, module.conv_1.weight, stride=2),
                         F.conv2d(odd, module.conv_2.weight, stride=2)[:, :, :(h + 1) // 2,
                                                                       :(w + 1) // 2]], 1)
        return bn(out, module.bn)
    k = int(name[-1])
    if name.startswith("sep_conv"):
        layers = list(module.op)
        for stage in range(2):
            _, dw, pw, norm = layers[4 * stage:4 * stage + 4]
            x = F.conv2d(F.relu(x), dw.weight, stride=stride if stage == 0 else 1,
                         padding=k // 2, groups=x.shape[1])
            x = bn(F.conv2d(x, pw.weight), norm)
        return x
    # Atrous: at stride 2 a resize by 0.5 to int((n - 1) * 0.5 + 1) (the released model's
    # scale_dimension), then the conv at rate 1; at stride 1 the conv at rate 2.
    x = F.relu(x)
    if stride == 2:
        x = resize_aligned(x, [int((n - 1) * 0.5 + 1) for n in x.shape[-2:]])
        return bn(F.conv2d(x, module.conv.weight, padding=k // 2), module.bn)
    return bn(F.conv2d(x, module.conv.weight, padding=k - 1, dilation=2), module.bn)


def reference_down_cell(cell, genotype_cell, prev_prev, prev, multiplier):
    fine = prev.shape[-2:]
    states = [relu_conv_bn(resize_aligned(prev_prev, fine), cell.preprocess_prev_prev),
              relu_conv_bn(prev, cell.preprocess_prev)]
    modules = iter(cell.ops)
    for pairs in genotype_cell:
        states.append(sum(apply_op(op, next(modules), states[inp], 2 if inp < 2 else 1)
                          for inp, op in pairs))
    return torch.cat(states[-multiplier:], dim=1)


def random_cell(rng, steps=5):
    return tuple(tuple((inp, rng.choice(CHOOSABLE)) for inp in rng.sample(range(2 + b), 2))
                 for b in range(steps))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fine_size", [(14, 10), (13, 11), (9, 16)])  # even, odd, mixed
def test_down_cell_equals_the_released_model_description(seed, fine_size):
    rng = random.Random(seed)
    genotype_cell = random_cell(rng)
    torch.manual_seed(seed)
    c_pp, c_p, channels, multiplier = 6, 10, 4, 3
    cell = RetrainCell(genotype_cell, c_pp, c_p, channels, 1, multiplier).double().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics and affine parameters
        for module in cell.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
    # H(l-2) at another size than H(l-1) (here one level coarser), H(l-1) at the finer level.
    prev_prev = torch.randn(2, c_pp, (fine_size[0] + 1) // 2, (fine_size[1] + 1) // 2,
                            dtype=torch.float64)
    prev = torch.randn(2, c_p, *fine_size, dtype=torch.float64)
    coarse = tuple((n + 1) // 2 for n in fine_size)
    with torch.no_grad():
        out = cell(prev_prev, prev, coarse)
        expected = reference_down_cell(cell, genotype_cell, prev_prev, prev, multiplier)
    assert out.shape == (2, multiplier * channels, *coarse)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_down_cells_preprocess_at_the_finer_resolution():
    paper = AutoDeepLab(RetrainConfig(num_classes=3, genotype=Genotype(
        (0, 1), ((( 0, "skip_connect"), (1, "max_pool_3x3")),) * 5), filter_multiplier=2,
        stem_widths=(4, 4, 8), aspp_channels=8, low_level_proj=4, decoder_channels=8))
    sizes = {}
    for i, cell in enumerate(paper.cells):
        cell.preprocess_prev.register_forward_hook(
            lambda m, inp, out, i=i: sizes.__setitem__(i, tuple(out.shape[-2:])))
    paper(torch.randn(2, 3, 64, 48))
    assert sizes == {0: (16, 12), 1: (16, 12)}  # cell 1 goes down to (8, 6) after its ops


def tiny_supernet(layers):
    torch.manual_seed(0)
    return AutoDeepLabSearch(SupernetConfig(num_classes=3, num_layers=layers,
                                            filter_multiplier=2, block_multiplier=3, steps=3,
                                            stem_widths=(4, 8), aspp_channels=4))


def test_first_supernet_cells_read_the_stems_stride_2_output_and_train_its_edges():
    model = tiny_supernet(3)
    assert model.prev_prev_levels[(0, 0)] == model.prev_prev_levels[(0, 1)] == -1
    assert model.cells["0_0"].preprocess_prev_prev.op[1].in_channels == 4  # stem layer 1
    read = {}
    for level in (0, 1):  # what each first-layer cell makes of H(l-2)
        model.cells[f"0_{level}"].preprocess_prev_prev.register_forward_hook(
            lambda m, inp, out, level=level: read.__setitem__(level, (inp[0], out)))
    loss = model(torch.randn(2, 3, 32, 32)).square().mean()
    for _, out in read.values():
        out.retain_grad()
    loss.backward()
    for level in (0, 1):
        stem_output, s0 = read[level]
        assert stem_output.shape[-2:] == (16, 16)  # the stem's stride-2 output
        assert s0.shape[-2:] == (8 // 2 ** level, 8 // 2 ** level)  # at the node's level
        assert s0.grad.abs().sum() > 0
        cell = model.cells[f"0_{level}"]
        for name, p in cell.prev_prev_ops.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (level, name)


def random_decoded_path(seed, layers):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand(layers, NUM_LEVELS, 3, generator=gen) * torch.from_numpy(
        transition_mask(layers))
    probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)
    return list(decode_network_path(probs.numpy().astype('float64')))


@pytest.mark.parametrize("seed", range(8))
def test_search_and_retrain_read_the_same_inputs_along_a_decoded_path(seed):
    layers = 8
    path = random_decoded_path(seed, layers)
    supernet = tiny_supernet(layers)
    retrain = AutoDeepLab(RetrainConfig(num_classes=3, genotype=Genotype(
        tuple(path), random_cell(random.Random(seed))), filter_multiplier=2))
    levels = {-2: -1, -1: 0, **dict(enumerate(path))}
    for layer, level in enumerate(path):
        # H(l-1): the path's previous node, reached by the transition the path takes.
        sources = [s for s, _ in supernet.incoming[(layer, level)]]
        assert levels[layer - 1] in sources
        assert retrain.cells[layer].direction == level - levels[layer - 1]
        # H(l-2): each network applies the one rule to the nodes it has at layer l-2. The
        # supernet reads the same level there (paper Eq. 6) or, where there is none, the
        # nearest; the retrained network has only the path's node. They are one node
        # wherever the path was at this level two layers back, or it could only have been
        # at the nearest (a path at level l + 1 went down at every layer), and so in the
        # first two layers always.
        searched = supernet.prev_prev_levels[(layer, level)]
        retrained = retrain.prev_prev_levels[layer]
        assert retrained == levels[layer - 2]
        if levels[layer - 2] == level or level == layer + 1:
            assert searched == retrained, (layer, path)
        elif level <= layer - 1:  # the node exists two layers back: Eq. 6's same level
            assert searched == level
        else:  # level == layer: the deepest level two layers back
            assert searched == layer - 1
    assert supernet.prev_prev_levels[(0, path[0])] == retrain.prev_prev_levels[0] == -1
    assert supernet.prev_prev_levels[(1, path[1])] == retrain.prev_prev_levels[1] == 0
