"""Regression: one value per example (a numeric column, or a class column whose names are numbers); MSE on
targets standardised with the training split's mean and std."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featstore.store import Split, Store

from ..errors import InputError
from ..metrics import pearson, spearman
from .base import ExampleTask, label_column


def _number(s: str) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


class Regression(ExampleTask):
    name = "regression"
    column_kind = "regression"
    named_outputs = False

    def __init__(self, column: str, values: np.ndarray | None = None):
        self.column, self.label_names = column, None
        self.values = values  # a class column's names as numbers, by class id

    @property
    def n_outputs(self) -> int:
        return 1

    @classmethod
    def from_store(cls, store: Store, column: str | None) -> "Regression":
        col = label_column(store, column)
        if col["kind"] == "regression":
            return cls(column)
        names = col["names"] or []
        values = [_number(n) for n in names]
        if any(v is None for v in values):
            text = [n for n, v in zip(names, values) if v is None][:3]
            raise InputError(f"label column {column!r} is text ({', '.join(map(repr, text))} ...), not numbers; "
                             "regression needs a numeric column (use --task classification)")
        return cls(column, np.asarray(values, dtype=np.float32))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Regression":
        v = meta.get("label_values")
        return cls(meta["label_column"], np.asarray(v, dtype=np.float32) if v is not None else None)

    def to_meta(self) -> dict[str, Any]:
        return {"label_column": self.column, "label_names": None,
                "label_values": self.values.tolist() if self.values is not None else None, "seq_task": None}

    @property
    def primary(self) -> str:
        return "pearson"

    def targets(self, split: Split) -> np.ndarray:
        t = split.targets(self.column)
        return self.values[t.astype(np.int64)] if self.values is not None else t.astype(np.float32)

    def fit(self, y_train: np.ndarray, split: str) -> dict[str, Any]:
        return {"target_mean": float(y_train.mean()), "target_std": float(y_train.std()) or 1.0}

    def loss(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, spec: Any) -> torch.Tensor:
        return F.mse_loss(out[:, 0].float(), (y.float() - spec.target_mean) / spec.target_std)

    def outputs(self, out: torch.Tensor, spec: Any) -> torch.Tensor:
        return out[:, 0].float() * spec.target_std + spec.target_mean  # (B,) de-standardised values

    def decode(self, outputs: np.ndarray, gold: Any) -> list[float]:
        return [float(v) for v in outputs]

    def metrics(self, outputs: np.ndarray, preds: list[float], gold: np.ndarray) -> dict[str, float]:
        y = np.asarray(gold, dtype=np.float64)
        return {"pearson": pearson(outputs, y), "spearman": spearman(outputs, y),
                "mse": float(np.mean((outputs - y) ** 2))}

    def eval_record(self, i: int, outputs: np.ndarray, preds: list[float], gold: np.ndarray) -> dict[str, Any]:
        return {"prediction": preds[i], "target": float(gold[i])}

    def show(self, output: np.ndarray, pred: float) -> dict[str, Any]:
        return {"prediction": pred}

    def format_record(self, rec: dict[str, Any]) -> str:
        return f"{rec['prediction']:.4f}\t{self.short(rec['text'])}"
