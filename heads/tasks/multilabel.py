"""Multi-label classification: any number of labels per example (a store column of kind `multilabel`, made
by `featstore extract --label-column tags` or `topics=sport,tech`). One sigmoid output per label, binary
cross-entropy; an example gets every label whose probability reaches the threshold, which is chosen on the
dev split (best micro-F1) and saved per seed in head.json (`decisions`). Y-Tuning has one label query per
label (and --label-init prior starts them from the label names).

Metrics: micro-F1 (primary: F1 over all example-label decisions pooled), macro-F1 (mean of the per-label F1
over the labels that occur in the gold or the predictions, as single-label macro-F1 here), subset accuracy
(all labels of an example right) and `f1/<label>` per label (NaN when a label is neither gold nor predicted).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featstore.store import Split, Store

from ..errors import InputError
from .base import ExampleTask, label_column

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)  # candidates tried on dev


def label_counts(gold: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label: true positives, false positives, false negatives (gold and pred (N, K) 0/1)."""
    g, p = np.asarray(gold, dtype=bool), np.asarray(pred, dtype=bool)
    return (g & p).sum(0), (~g & p).sum(0), (g & ~p).sum(0)


def micro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    tp, fp, fn = (int(c.sum()) for c in label_counts(gold, pred))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def per_label_f1(gold: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(K,) F1 of each label; NaN where the label is neither gold nor predicted anywhere."""
    tp, fp, fn = label_counts(gold, pred)
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


class MultiLabel(ExampleTask):
    name = "multilabel"
    column_kind = "multilabel"
    label_queries_from_names = True

    def __init__(self, column: str, label_names: list[str], threshold: float = 0.5):
        self.column, self.label_names, self.threshold = column, list(label_names), threshold

    @classmethod
    def from_store(cls, store: Store, column: str | None) -> "MultiLabel":
        col = label_column(store, column)
        if col["kind"] != "multilabel":
            raise InputError(f"label column {column!r} holds one {col['kind']} label per example; multi-label needs a "
                             "column of label lists (extract with --label-column NAME:multilabel or NAME=COL1,COL2)")
        return cls(column, col["names"])

    @property
    def primary(self) -> str:
        return "micro_f1"

    def targets(self, split: Split) -> np.ndarray:
        return split.targets(self.column).astype(np.float32)  # (N, K) 0/1

    def fit(self, y_train: np.ndarray, split: str) -> dict[str, Any]:
        if not y_train.any() or y_train.all():
            raise InputError(f"split {split!r}: every label of {self.column!r} is always "
                             f"{'on' if y_train.all() else 'off'}; nothing to learn")
        return {}

    def loss(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, spec: Any) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out.float(), y.float())

    def outputs(self, out: torch.Tensor, spec: Any) -> torch.Tensor:
        return out.float().sigmoid()  # (B, K) per-label probabilities

    def decide(self, outputs: np.ndarray, gold: np.ndarray) -> dict[str, Any]:
        """The threshold with the best micro-F1 on `gold` (ties: the one nearest 0.5)."""
        scores = [(np.nan_to_num(micro_f1(gold, outputs >= t), nan=-1.0), -abs(t - 0.5), float(t)) for t in THRESHOLDS]
        return {"threshold": max(scores)[2]}

    def apply(self, decision: dict[str, Any]) -> None:
        self.threshold = float(decision.get("threshold", 0.5))

    def decode(self, outputs: np.ndarray, gold: Any) -> list[np.ndarray]:
        return list(outputs >= self.threshold)

    def metrics(self, outputs: np.ndarray, preds: list[np.ndarray], gold: np.ndarray) -> dict[str, float]:
        pred = np.asarray(preds, dtype=bool).reshape(gold.shape)
        f1 = per_label_f1(gold, pred)
        out = {"micro_f1": micro_f1(gold, pred),
               "macro_f1": float(np.nanmean(f1)) if not np.isnan(f1).all() else float("nan"),
               "subset_accuracy": float((pred == gold.astype(bool)).all(1).mean()) if len(gold) else float("nan")}
        out.update({f"f1/{n}": float(v) for n, v in zip(self.label_names, f1)})
        return out

    def _names(self, row: np.ndarray) -> list[str]:
        return [n for n, on in zip(self.label_names, row) if on]

    def eval_record(self, i: int, outputs: np.ndarray, preds: list[np.ndarray], gold: np.ndarray) -> dict[str, Any]:
        return {"labels": self._names(preds[i]), "target": self._names(gold[i]),
                "probabilities": {n: float(p) for n, p in zip(self.label_names, outputs[i])}}

    def show(self, output: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
        """The labels at or above the threshold, and every label's probability."""
        return {"labels": self._names(pred), "threshold": self.threshold,
                "probabilities": {n: float(p) for n, p in zip(self.label_names, output)}}

    def format_record(self, rec: dict[str, Any]) -> str:
        on = "  ".join(f"{n}={rec['probabilities'][n]:.3f}" for n in rec["labels"]) or "-"
        return f"{on}\t{self.short(rec['text'])}"
