"""Diagnostics of the architecture step: gradient norms, signal-to-noise, update sizes, and
the decode margins, each against a plain computation."""
import csv
import math

import numpy as np
import pytest
import torch

from engine.arch_stats import ArchStats
from modeling.decoding import decode_cell, decode_margins, top_k_paths
from modeling.operations import PRIMITIVES
from modeling.search_space import num_edges, transition_mask


def test_statistics_equal_a_plain_computation_over_the_window():
    rng = np.random.default_rng(0)
    alphas = rng.normal(0.3, 1.0, size=(7, 4, 3))  # 7 steps of a (4, 3) gradient
    betas = rng.normal(0.0, 1.0, size=(7, 5))
    betas[:, 2] = 0.0  # a transition that does not exist: its gradient is always zero
    updates = rng.normal(0, 1e-3, size=(7, 4, 3))
    stats = ArchStats(["alphas", "betas"])
    for step in range(7):
        last = stats.record([torch.tensor(alphas[step]), torch.tensor(betas[step])],
                            [torch.tensor(updates[step]), torch.zeros(5)])
        assert last["alphas_grad_norm"] == pytest.approx(np.linalg.norm(alphas[step]))
        assert last["alphas_update"] == pytest.approx(np.abs(updates[step]).mean())
    summary = stats.summary()
    assert summary["alphas_grad_norm"] == pytest.approx(
        np.mean([np.linalg.norm(g) for g in alphas]))
    assert summary["alphas_update"] == pytest.approx(np.abs(updates).mean())
    snr = np.abs(alphas.mean(0)) / alphas.std(0, ddof=1)
    assert summary["alphas_grad_snr"] == pytest.approx(np.median(snr))
    live = np.delete(betas, 2, axis=1)
    assert summary["betas_grad_snr"] == pytest.approx(
        np.median(np.abs(live.mean(0)) / live.std(0, ddof=1)))


def test_a_consistent_gradient_has_a_high_ratio_and_noise_a_low_one():
    rng = np.random.default_rng(1)
    stats = ArchStats(["signal", "noise"])
    for _ in range(50):
        stats.record([torch.tensor(1.0 + 0.1 * rng.normal(size=20)),
                      torch.tensor(rng.normal(size=20))], [torch.zeros(20)] * 2)
    summary = stats.summary()
    assert summary["signal_grad_snr"] > 5 and summary["noise_grad_snr"] < 0.5


def test_window_resets_and_survives_a_checkpoint():
    stats = ArchStats(["alphas"])
    assert math.isnan(stats.summary()["alphas_grad_snr"])
    for value in (1.0, 2.0, 4.0):
        stats.record([torch.full((3,), value)], [torch.zeros(3)])
    copy = ArchStats(["alphas"])
    copy.load_state_dict(torch.load(_saved(stats.state_dict()), weights_only=True))
    assert copy.summary() == stats.summary()
    stats.reset()
    assert stats.steps == 0 and math.isnan(stats.summary()["alphas_grad_norm"])


def _saved(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_decode_margins_of_a_known_architecture():
    layers = 3
    mask = transition_mask(layers)
    probs = np.where(mask, 1.0, 0.0)
    probs = probs / np.maximum(probs.sum(-1, keepdims=True), 1)
    probs[0, 0] = [0, 0.8, 0.2]  # layer 0 at level 0 is 4x as likely as at level 1
    probs[1, 0] = [0, 0.9, 0.1]
    probs[2, 0] = [0, 0.7, 0.3]  # best 0 0 0 (0.504), then 0 0 1 (0.216)
    weights = np.full((num_edges(2), len(PRIMITIVES)), 0.1)
    weights[:, PRIMITIVES.index("sep_conv_3x3")] = 0.3  # chosen everywhere, 0.2 ahead
    weights[0, PRIMITIVES.index("avg_pool_3x3")] = 0.25  # on edge 0 only 0.05 ahead
    weights[:, PRIMITIVES.index("none")] = 0.9  # never a choice, never the runner-up
    margins = decode_margins(weights, probs)
    assert [path for path, _ in top_k_paths(probs, 2)] == [[0, 0, 0], [0, 0, 1]]
    assert margins["path_prob"] == pytest.approx(0.504)
    assert margins["path_margin"] == pytest.approx(0.504 / 0.216)
    kept = [inp for pairs in decode_cell(weights) for inp, _ in pairs]
    assert len(kept) == 4
    assert margins["op_gap_min"] == pytest.approx(0.05)
    assert margins["op_gap_mean"] == pytest.approx((0.05 + 3 * 0.2) / 4)


def test_search_logs_the_diagnostics_per_epoch(tmp_path):
    from tests.test_search import run_search

    out = run_search(tmp_path, "--epochs", "2", "--alpha-epoch", "1", "--max-samples", "8",
                     "--no-val")
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    for key in ("alphas_grad_norm", "betas_grad_snr", "alphas_update", "path_margin",
                "op_gap_min"):
        assert key in rows[0], key
    assert rows[0]["alphas_grad_norm"] == "nan"  # no architecture step in the warm-up epoch
    assert float(rows[1]["alphas_grad_norm"]) > 0 and float(rows[1]["betas_update"]) > 0
    assert float(rows[1]["path_margin"]) >= 1.0
    assert "architecture: gradient SNR alphas" in (out / "search.log").read_text()


def _summary(alphas, betas):
    from modeling.decoding import arch_probabilities, format_summary, genotype_from_arch

    weights, probs = arch_probabilities(alphas, betas)
    return format_summary(genotype_from_arch(alphas, betas), weights, probs,
                          top_k_paths(probs, 2))


def test_decode_says_when_the_architecture_is_too_close_to_call():
    rng = np.random.default_rng(0)
    layers, edges = 4, num_edges(3)
    near_uniform = _summary(1e-3 * rng.normal(size=(edges, 8)),
                            1e-3 * rng.normal(size=(layers, 4, 3)))
    assert "WARNING: this architecture is too close to call" in near_uniform
    assert "mean entropy of the alphas 2.079" in near_uniform
    alphas = np.zeros((edges, 8))
    alphas[:, PRIMITIVES.index("sep_conv_3x3")] = 3.0  # every edge clearly decided
    alphas[::2, 0] = 1.0  # and some edges clearly stronger than others
    betas = np.zeros((layers, 4, 3))
    betas[:, :, 1] = 4.0  # stay at every level: one path far ahead
    decided = _summary(alphas, betas)
    assert "too close to call" not in decided
    assert "how decided: the path is" in decided

    def expected_levels(summary):  # (under the betas, under uniform betas) per layer
        line = next(x for x in summary.splitlines() if x.startswith("where the betas lead"))
        ours, uniform = line.split(": ", 1)[1].split(" (uniform betas: ")
        return [float(v) for v in ours.split()], [float(v) for v in uniform.rstrip(")").split()]

    ours, uniform = expected_levels(near_uniform)
    assert len(ours) == layers and ours == pytest.approx(uniform, abs=0.01)
    assert uniform[0] == 0.5  # from the stem at level 0: stay or go down, equally likely
    ours, uniform = expected_levels(decided)
    assert max(ours) < 0.1 and uniform == expected_levels(near_uniform)[1]  # stays at level 0
