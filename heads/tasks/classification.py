"""Single-label classification: softmax over the classes of a label column, cross-entropy."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featstore.store import Split, Store

from ..errors import InputError
from ..metrics import accuracy, macro_f1, mcc
from .base import ExampleTask, label_column


class Classification(ExampleTask):
    name = "classification"
    column_kind = "class"
    label_queries_from_names = True

    def __init__(self, column: str, label_names: list[str]):
        self.column, self.label_names = column, list(label_names)

    @classmethod
    def from_store(cls, store: Store, column: str | None) -> "Classification":
        col = label_column(store, column)
        names = col["names"]
        if col["kind"] != "class":
            raise InputError(f"label column {column!r} holds continuous numbers (regression); classification "
                             "needs a class column (re-extract with --label-column NAME:class)")
        if not names or len(names) < 2:
            raise InputError(f"label column {column!r} has {len(names or [])} class(es); classification needs 2 or more")
        return cls(column, names)

    @property
    def primary(self) -> str:
        return "accuracy"

    def targets(self, split: Split) -> np.ndarray:
        return split.targets(self.column).astype(np.int64)

    def fit(self, y_train: np.ndarray, split: str) -> dict[str, Any]:
        if len(np.unique(y_train)) < 2:
            raise InputError(f"split {split!r} has only one class of {self.column!r}; nothing to learn")
        self.note_untrained(y_train)
        return {}

    def loss(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, spec: Any) -> torch.Tensor:
        return F.cross_entropy(out.float(), y)

    def outputs(self, out: torch.Tensor, spec: Any) -> torch.Tensor:
        return out.float().softmax(-1)  # (B, Y) class probabilities

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Classification":
        task = cls(meta["label_column"], meta["label_names"])
        task.untrained = tuple(meta.get("untrained_labels") or ())
        return task

    def decode(self, outputs: np.ndarray, gold: Any) -> list[int]:
        """The most probable class among those the training split has."""
        return [int(k) for k in self.mask_untrained(outputs).argmax(1)] if len(outputs) else []

    def metrics(self, outputs: np.ndarray, preds: list[int], gold: np.ndarray) -> dict[str, float]:
        k, pred = self.n_outputs, np.asarray(preds, dtype=np.int64)
        return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, k), "mcc": mcc(gold, pred, k)}

    def eval_record(self, i: int, outputs: np.ndarray, preds: list[int], gold: np.ndarray) -> dict[str, Any]:
        names = self.label_names
        return {"label": names[preds[i]], "target": names[int(gold[i])],
                "probabilities": {n: float(p) for n, p in zip(names, outputs[i])}}

    def show(self, output: np.ndarray, pred: int) -> dict[str, Any]:
        return {"label": self.label_names[pred],
                "probabilities": {n: float(p) for n, p in zip(self.label_names, output)}}

    def format_record(self, rec: dict[str, Any], top: int = 3) -> str:
        probs = sorted(rec["probabilities"].items(), key=lambda kv: -kv[1])[:top]
        return f"{rec['label']}\t" + "  ".join(f"{k}={v:.3f}" for k, v in probs) + f"\t{self.short(rec['text'])}"
