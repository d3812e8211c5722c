"""What token and span tasks share: per-token alignment (word index, character span) of each example, and
outputs collected per position.

Decoding needs what the store keeps beside the features: each token's word index and character span, and
per example the gold words + tags or the context + gold answers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from featstore.store import Split, Store

from .base import Task


@dataclass(kw_only=True)
class Alignment:
    """Per-token alignment of a set of examples (storage order) and their gold records."""

    offsets: np.ndarray  # (N + 1,)
    word_index: np.ndarray  # (n_tokens,) -1 = special token / not context
    char_start: np.ndarray  # (n_tokens,)
    char_end: np.ndarray  # (n_tokens,)
    gold: list[dict[str, Any]] = field(default_factory=list)
    # span stores with --stride windows: per example (a window), the question it belongs to; None: one per question
    question: np.ndarray | None = None

    @classmethod
    def of(cls, split: Split) -> "Alignment":
        win = split.span_windows()
        return cls(offsets=split.offsets, word_index=split.token_array("word_index"),
                   char_start=split.token_array("char_start"), char_end=split.token_array("char_end"),
                   gold=split.gold(), question=None if win is None else win["question"])

    @classmethod
    def of_features(cls, features: Any, gold: list[dict[str, Any]], question: np.ndarray | None = None
                    ) -> "Alignment":
        """Raw texts featurised for predict (`featstore.extract.featurise`), gold records in input order.
        `question`: with windows, each featurised example's (input order) question, an index into `gold`."""
        offsets = np.concatenate([[0], np.cumsum(features.lengths)])
        rows = features.order if question is None else np.asarray(question)[features.order]
        return cls(offsets=offsets, word_index=features.token_extra("word_index"),
                   char_start=features.token_extra("char_start"), char_end=features.token_extra("char_end"),
                   gold=[gold[r] for r in rows], question=None if question is None else rows)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.word_index[a:b], self.char_start[a:b], self.char_end[a:b]


class PositionTask(Task):
    """Scores per token: the head gives (B, T, Y); each example's outputs are its real tokens' (T_i, Y)."""

    output = "position"
    store_kind = ""  # the store's task: token | span

    def __init__(self) -> None:
        self._align: dict[str, Alignment] = {}

    @classmethod
    def detect(cls, store: Store, column: str | None) -> bool:
        return store.task == cls.store_kind

    def gold(self, split: Split) -> Alignment:
        if split.name not in self._align:
            self._align[split.name] = self.alignment(split)
        return self._align[split.name]

    def alignment(self, split: Split) -> Alignment:
        return Alignment.of(split)

    def collect(self, out: torch.Tensor, batch: Any, spec: Any) -> list[np.ndarray]:
        out = out.float().cpu().numpy()  # (B, T, Y)
        return [out[b, :int(batch.mask[b].sum())] for b in range(len(batch.index))]

    def predict_gold(self, prepared: Any, features: Any) -> Alignment:
        return Alignment.of_features(features, prepared["gold"])

    def metrics(self, outputs: Any, preds: list[Any], gold: Alignment) -> dict[str, float]:
        return self.score(preds, gold)

    def score(self, preds: list[Any], gold: Alignment) -> dict[str, float]:
        raise NotImplementedError
