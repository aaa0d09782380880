"""The retrain network (paper Fig. 3): every path builds and learns, paper sizes, rebuilds."""
import io
import random

import pytest
import torch

from modeling.genotypes import GENOTYPES, Genotype
from modeling.retrain_net import AutoDeepLab, RetrainConfig, aspp_rates
from utils.flops import count_parameters, multi_adds

PAPER = GENOTYPES["autodeeplab"]
# Paper Table 2 (millions). Counting rule: every trainable tensor (BN affine included).
PAPER_PARAMS_M = {20: 10.15, 32: 21.62, 48: 44.42}
PARAMS_TOLERANCE = 0.005  # relative; we obtain 10.147 / 21.622 / 44.425


@pytest.fixture(autouse=True)
def one_thread():
    # Several torch threads on a shared 2-core machine slow tiny convs down many times over.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(path, cell=PAPER.cell, num_classes=3, **kw):
    config = RetrainConfig(num_classes=num_classes, genotype=Genotype(path, cell),
                           filter_multiplier=2, stem_widths=(4, 4, 8), aspp_channels=8,
                           low_level_proj=4, decoder_channels=8, **kw)
    return AutoDeepLab(config)


def random_path(rng, layers):
    path = [rng.randint(0, 1)]
    while len(path) < layers:
        path.append(min(3, max(0, path[-1] + rng.choice((-1, 0, 1)))))
    return tuple(path)


PATHS = [
    (1, 2, 3, 3),  # never at stride 4: the decoder reads the stem
    (0, 1, 2, 3),  # ends at stride 32
    (1, 0, 1, 2, 1),  # returns to stride 4 once
    (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1),  # the paper's
] + [random_path(random.Random(seed), 5) for seed in range(3)]


@pytest.mark.parametrize("path", PATHS)
def test_every_path_runs_forward_and_backward(path):
    torch.manual_seed(0)
    model = tiny(path)
    model.set_drop_path_prob(0.3)
    images = torch.randn(2, 3, 37, 45)  # odd sizes: levels round up, resizes hit exact sizes
    logits = model(images)
    assert logits.shape == (2, 3, 37, 45)
    assert torch.isfinite(logits).all()
    logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_low_level_features_come_from_the_last_stride_4_cell():
    assert tiny((0, 0, 1, 0, 1)).low_level_layer == 3
    stem_only = tiny((1, 2, 2))
    assert stem_only.low_level_layer == -1
    assert stem_only.decoder.low_level.op[0].in_channels == 8  # the stem's width


def test_cell_ops_follow_the_genotype_order():
    cell = tiny((0,)).cells[0]
    expected = [(inp, op) for pairs in PAPER.cell for inp, op in pairs]
    assert [inp for inp, _ in expected] == cell.inputs
    kinds = {"sep_conv_3x3": "SepConv", "sep_conv_5x5": "SepConv",
             "atrous_conv_3x3": "AtrousConv", "atrous_conv_5x5": "AtrousConv"}
    assert [type(m).__name__ for m in cell.ops] == [kinds[op] for _, op in expected]
    kernels = [(m.conv if hasattr(m, "conv") else m.op[1]).kernel_size[0] for m in cell.ops]
    assert kernels == [int(op[-1]) for _, op in expected]


def test_aspp_rates_scale_with_the_final_stride():
    assert aspp_rates(16) == (6, 12, 18)
    assert aspp_rates(8) == (12, 24, 36)
    assert aspp_rates(32) == (3, 6, 9)


@pytest.mark.parametrize("filters", sorted(PAPER_PARAMS_M))
def test_paper_parameter_counts(filters):
    with torch.device("meta"):
        model = AutoDeepLab(RetrainConfig(num_classes=19, genotype=PAPER,
                                          filter_multiplier=filters))
    params_m = count_parameters(model) / 1e6
    assert params_m == pytest.approx(PAPER_PARAMS_M[filters], rel=PARAMS_TOLERANCE)


def test_multi_adds_count_convolutions_on_the_meta_device():
    model = tiny((0, 1))
    small = multi_adds(model, (32, 32))
    assert small > 0 and multi_adds(model, (64, 64)) == pytest.approx(4 * small, rel=0.05)


def test_model_args_rebuild_the_same_outputs():
    torch.manual_seed(0)
    model = tiny((0, 1, 1), block_multiplier=3).eval()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    rebuilt = AutoDeepLab.from_model_args(state["model_args"]).eval()
    rebuilt.load_state_dict(state["model"])
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), rebuilt(images))


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = tiny((0, 1))
    model.set_drop_path_prob(0.5)
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), model(images))
