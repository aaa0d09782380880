import math

import numpy as np
import pytest
import torch

from utils.metrics import ConfusionMatrix


def brute_force(target: np.ndarray, pred: np.ndarray, n: int, ignore: int) -> np.ndarray:
    mat = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(target.ravel(), pred.ravel()):
        if t != ignore:
            mat[t, p] += 1
    return mat


def test_matches_brute_force_and_formulas():
    rng = np.random.default_rng(0)
    n = 5
    cm = ConfusionMatrix(n)
    expected = np.zeros((n, n), dtype=np.int64)
    for _ in range(3):
        target = rng.integers(0, n, size=(2, 7, 9))
        target[rng.random(target.shape) < 0.2] = 255
        pred = rng.integers(0, n, size=target.shape)
        cm.update(torch.from_numpy(target), torch.from_numpy(pred))
        expected += brute_force(target, pred, n, 255)
    assert cm.mat.dtype == torch.int64
    np.testing.assert_array_equal(cm.mat.numpy(), expected)

    m = cm.compute()
    tp = np.diag(expected).astype(float)
    rows, cols = expected.sum(1), expected.sum(0)
    iou = tp / (rows + cols - tp)
    assert m["miou"] == pytest.approx(iou.mean())
    assert m["per_class_iou"] == pytest.approx(iou.tolist())
    assert m["pixel_acc"] == pytest.approx(tp.sum() / expected.sum())
    assert m["mean_acc"] == pytest.approx((tp / rows).mean())
    assert m["fwiou"] == pytest.approx((rows / rows.sum() * iou).sum())


def test_ignore_index_is_skipped():
    cm = ConfusionMatrix(3, ignore_index=255)
    target = torch.tensor([0, 255, 255, 2])
    pred = torch.tensor([0, 1, 2, 2])  # predictions at ignored pixels must not count
    cm.update(target, pred)
    assert cm.mat.sum().item() == 2
    assert cm.mat[0, 0] == 1 and cm.mat[2, 2] == 1


def test_perfect_prediction_and_absent_class():
    cm = ConfusionMatrix(4)
    target = torch.tensor([[0, 1], [1, 2]])  # class 3 never occurs
    cm.update(target, target.clone())
    m = cm.compute()
    assert (
        m["miou"] == 1.0 and m["pixel_acc"] == 1.0 and m["mean_acc"] == 1.0 and m["fwiou"] == 1.0
    )
    assert math.isnan(m["per_class_iou"][3])


def test_reset_and_empty():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([1, 1]))
    cm.reset()
    assert cm.mat.sum() == 0
    assert math.isnan(cm.compute()["miou"])


def test_out_of_range_ids_raise():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError):
        cm.update(torch.tensor([0, 2]), torch.tensor([0, 1]))
