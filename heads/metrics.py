"""Metrics in numpy (no sklearn/scipy): accuracy, macro-F1, Matthews correlation; Pearson, Spearman."""
from __future__ import annotations

import math

import numpy as np

PRIMARY = {"classification": "accuracy", "regression": "pearson"}
METRICS = {"classification": ("accuracy", "macro_f1", "mcc"), "regression": ("pearson", "spearman", "mse")}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts: rows are true classes, columns predicted ones."""
    c = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(c, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return c


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes that occur in y_true or y_pred (sklearn's convention)."""
    c = confusion(y_true, y_pred, n_classes)
    tp = np.diag(c).astype(np.float64)
    support, predicted = c.sum(1), c.sum(0)
    present = (support + predicted) > 0
    if not present.any():
        return float("nan")
    denom = support + predicted
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(f1[present].mean())


def mcc(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Matthews correlation, multi-class (Gorodkin's R_K); 0 when undefined (a constant prediction)."""
    c = confusion(y_true, y_pred, n_classes).astype(np.float64)
    t, p = c.sum(1), c.sum(0)
    n, correct = c.sum(), np.trace(c)
    cov_tp = correct * n - t @ p
    cov_pp = n * n - p @ p
    cov_tt = n * n - t @ t
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return float(cov_tp / math.sqrt(cov_pp * cov_tt))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    d = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / d) if d > 0 else 0.0


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of positions start+1..end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rankdata(x), rankdata(y))


def compute(task: str, y_true: np.ndarray, out: np.ndarray, n_classes: int | None = None) -> dict[str, float]:
    """All metrics of a task. `out`: class probabilities (N, K) or predicted values (N,)."""
    if task == "classification":
        k = n_classes or out.shape[1]
        pred = out.argmax(1)
        return {"accuracy": accuracy(y_true, pred), "macro_f1": macro_f1(y_true, pred, k), "mcc": mcc(y_true, pred, k)}
    y = np.asarray(y_true, dtype=np.float64)
    return {"pearson": pearson(out, y), "spearman": spearman(out, y), "mse": float(np.mean((out - y) ** 2))}


def higher_is_better(metric: str) -> bool:
    return metric != "mse"


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) over seeds."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}
