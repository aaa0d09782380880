"""Synchronised batch norm on the CPU: two gloo processes with one image each normalise,
back-propagate and update running statistics exactly as one batch norm over both images."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from modeling.genotypes import GENOTYPES, Genotype
from modeling.retrain_net import AutoDeepLab, RetrainConfig
from utils.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

WORLD = 2
# (per-process batch, channels, height, width): the ASPP image pooling's 1 x 1 map with one
# image per process, and a spatial map with an uneven split of values per channel.
SHAPES = [(1, 5, 1, 1), (2, 3, 4, 7)]


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(WORLD * n, c, h, w, generator=g) * 3 + 1
    upstream = torch.randn(WORLD * n, c, h, w, generator=g)
    weight = torch.rand(c, generator=g) + 0.5
    bias = torch.randn(c, generator=g)
    return x, upstream, weight, bias


def _run_rank(rank, init_file, shape, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        torch.set_num_threads(1)
        x, upstream, weight, bias = _inputs(shape)
        n = shape[0]
        bn = SyncBatchNorm(shape[1], momentum=0.3)
        with torch.no_grad():
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
        mine = x[rank * n:(rank + 1) * n].clone().requires_grad_()
        out = bn(mine)
        (out * upstream[rank * n:(rank + 1) * n]).sum().backward()
        results[rank] = dict(out=out.detach(), grad_x=mine.grad, grad_w=bn.weight.grad,
                             grad_b=bn.bias.grad, running_mean=bn.running_mean.clone(),
                             running_var=bn.running_var.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("shape", SHAPES)
def test_two_processes_equal_one_batch_norm_over_both(tmp_path, shape):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_run_rank, args=(str(tmp_path / "init"), shape, results), nprocs=WORLD)
        results = dict(results)
    x, upstream, weight, bias = _inputs(shape)
    plain = nn.BatchNorm2d(shape[1], momentum=0.3)
    with torch.no_grad():
        plain.weight.copy_(weight)
        plain.bias.copy_(bias)
    whole = x.clone().requires_grad_()
    out = plain(whole)
    (out * upstream).sum().backward()
    n = shape[0]
    close = dict(rtol=1e-4, atol=1e-5)
    for rank in range(WORLD):
        part = slice(rank * n, (rank + 1) * n)
        torch.testing.assert_close(results[rank]["out"], out[part].detach(), **close)
        torch.testing.assert_close(results[rank]["grad_x"], whole.grad[part], **close)
        torch.testing.assert_close(results[rank]["running_mean"], plain.running_mean, **close)
        torch.testing.assert_close(results[rank]["running_var"], plain.running_var, **close)
    # Each process holds the gradient of its own loss; DDP sums (then averages) them.
    torch.testing.assert_close(results[0]["grad_w"] + results[1]["grad_w"], plain.weight.grad,
                               **close)
    torch.testing.assert_close(results[0]["grad_b"] + results[1]["grad_b"], plain.bias.grad,
                               **close)


def test_one_process_is_plain_batch_norm():
    x, upstream, weight, bias = _inputs((2, 3, 4, 5))
    sync, plain = SyncBatchNorm(3), nn.BatchNorm2d(3)
    for bn in (sync, plain):
        with torch.no_grad():
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
    assert torch.equal(sync(x), plain(x))
    assert torch.equal(sync.running_var, plain.running_var)
    sync.eval(), plain.eval()
    assert torch.equal(sync(x), plain(x))


def test_convert_keeps_weights_and_replaces_every_batch_norm():
    torch.manual_seed(0)
    genotype = Genotype((0, 1, 1), GENOTYPES["autodeeplab"].cell)
    model = AutoDeepLab(RetrainConfig(4, genotype, filter_multiplier=2, aspp_channels=8,
                                      low_level_proj=4, decoder_channels=8)).eval()
    x = torch.randn(1, 3, 32, 32)
    before = model(x)
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert sum(isinstance(m, SyncBatchNorm) for m in converted.modules()) == count > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    assert torch.equal(converted(x), before)
