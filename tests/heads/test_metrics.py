"""Metrics against hand-computed values (no sklearn/scipy in the package)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from heads.metrics import accuracy, macro_f1, mcc, mean_std, pearson, rankdata, spearman
from heads.tasks.classification import Classification
from heads.tasks.regression import Regression


def test_classification_metrics():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    assert accuracy(y, p) == pytest.approx(4 / 6)
    # per class F1: c0 p=1/2 r=1/2 -> .5; c1 p=2/3 r=1 -> .8; c2 p=1 r=1/2 -> 2/3
    assert macro_f1(y, p, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # binary MCC equals the textbook formula
    yb, pb = np.array([1, 1, 1, 0, 0, 0, 0, 1]), np.array([1, 1, 0, 0, 0, 1, 0, 1])
    tp, tn, fp, fn = 3, 3, 1, 1
    assert mcc(yb, pb, 2) == pytest.approx((tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert mcc(y, y, 3) == pytest.approx(1.0)
    assert mcc(y, np.zeros_like(y), 3) == 0.0  # constant prediction: undefined -> 0
    assert macro_f1(np.array([0, 0]), np.array([0, 0]), 3) == 1.0  # absent classes are ignored


def test_regression_metrics():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0)  # monotone, not linear
    assert list(rankdata(np.array([10, 20, 20, 5]))) == [2.0, 3.5, 3.5, 1.0]
    r = np.random.default_rng(0)
    a, b = r.standard_normal(50), r.standard_normal(50)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    task = Regression("score")
    m = task.metrics(x + 1, task.decode(x + 1, x), x)
    assert m["mse"] == pytest.approx(1.0) and m["pearson"] == pytest.approx(1.0)


def test_task_metrics_and_summary():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    task = Classification("label", ["a", "b"])
    m = task.metrics(probs, task.decode(probs, None), np.array([0, 1, 1]))
    assert m["accuracy"] == pytest.approx(2 / 3) and set(m) == {"accuracy", "macro_f1", "mcc"}
    s = mean_std([0.8, 0.9, 1.0])
    assert s["mean"] == pytest.approx(0.9) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    assert mean_std([0.5])["std"] == 0.0
