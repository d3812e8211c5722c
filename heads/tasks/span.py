"""Extractive QA: start and end scores per context token; the best valid span (or no answer, when some
questions have none and the [CLS] score wins) scored with SQuAD EM/F1."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from featstore.extract.inputs import SplitData
from featstore.store import Split, Store

from ..errors import InputError
from ..metrics import squad_metrics
from .positions import Alignment, PositionTask

MAX_ANSWER_TOKENS = 30


def best_span(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, max_answer: int) -> tuple[int, int, float]:
    """Highest start + end score with end >= start, end - start < max_answer, both on allowed positions."""
    s_score = np.where(allowed, start, -np.inf)  # (T,)
    e_score = np.where(allowed, end, -np.inf)
    total = s_score[:, None] + e_score[None, :]  # (T, T)
    T = len(start)
    i, j = np.indices((T, T))
    total = np.where((j >= i) & (j - i < max_answer), total, -np.inf)
    k = int(np.argmax(total))
    return k // T, k % T, float(total.flat[k])


class SpanExtraction(PositionTask):
    name = "span"
    store_kind = extraction_task = "span"

    def __init__(self, null_answers: bool = False):
        super().__init__()
        self.label_names, self.column = ["start", "end"], "answer"
        self.null_answers = null_answers  # some questions have no answer (SQuAD v2): predict "" when it wins

    @classmethod
    def from_store(cls, store: Store, column: str | None) -> "SpanExtraction":
        info = store.task_info  # a clear error for a sentence store
        return cls(any(s.get("unanswerable", 0) for s in info.get("splits", {}).values()))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "SpanExtraction":
        return cls(bool((meta.get("seq_task") or {}).get("null_answers")))

    def to_meta(self) -> dict[str, Any]:
        return {"label_column": self.column, "label_names": self.label_names, "label_values": None,
                "seq_task": {"scheme": None, "null_answers": self.null_answers}}

    @property
    def primary(self) -> str:
        return "f1"

    def targets(self, split: Split) -> np.ndarray:
        return split.span_targets()  # (N, 2) start/end token positions

    def loss(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, spec: Any) -> torch.Tensor:
        """Cross-entropy of the start and of the end position over the real tokens."""
        logits = out.float().masked_fill(~mask.unsqueeze(-1), -1e4)  # (B, T, 2)
        return 0.5 * (F.cross_entropy(logits[..., 0], y[:, 0]) + F.cross_entropy(logits[..., 1], y[:, 1]))

    def decode(self, outputs: list[np.ndarray], gold: Alignment) -> list[tuple[str, int, int]]:
        """Per example: (answer text, char start, char end); ("", -1, -1) for no answer."""
        preds = []
        for i, lg in enumerate(outputs):
            _, cs, ce = gold.example(i)
            context = gold.gold[i]["context"]
            s, e, score = best_span(lg[:, 0], lg[:, 1], cs >= 0, MAX_ANSWER_TOKENS)
            if not np.isfinite(score) or (self.null_answers and lg[0, 0] + lg[0, 1] > score):
                preds.append(("", -1, -1))
            else:
                preds.append((context[cs[s]:ce[e]], int(cs[s]), int(ce[e])))
        return preds

    def score(self, preds: list[tuple[str, int, int]], gold: Alignment) -> dict[str, float]:
        return squad_metrics([p[0] for p in preds], [g["answers"] for g in gold.gold])

    def eval_record(self, i: int, outputs: Any, preds: list[Any], gold: Alignment) -> dict[str, Any]:
        answer, start, end = preds[i]
        return {"answer": answer, "start": start, "end": end, "target": gold.gold[i]["answers"]}

    def predict_split(self, texts: Sequence[str], pairs: Sequence[str] | None, backbone: dict[str, Any]
                      ) -> tuple[SplitData, Any]:
        """`texts` are contexts, `pairs` one question each."""
        n = len(texts)
        if pairs is None or len(pairs) != n:
            raise InputError("a span head answers questions: give one --question per --context")
        split = SplitData("predict", "<predict>", list(pairs), list(texts), [f"q-{i}" for i in range(n)])
        split.extra = {"answers": [[] for _ in range(n)]}
        return split, {"texts": list(texts), "questions": list(pairs),
                       "gold": [{"context": c, "question": q, "answers": []} for c, q in zip(texts, pairs)]}

    def predict_record(self, i: int, j: int, prepared: Any, outputs: Any, preds: list[Any]) -> dict[str, Any]:
        answer, a, b = preds[j]
        return {"context": prepared["texts"][i], "question": prepared["questions"][i], "answer": answer,
                "start": a if answer else None, "end": b if answer else None}

    def format_record(self, rec: dict[str, Any]) -> str:
        """The answer and its offsets in the context."""
        where = f"[{rec['start']}:{rec['end']}]" if rec["answer"] else "(no answer)"
        return f"{rec['answer']!r} {where}\t{rec['question']}"
