"""Extractive QA: start and end scores per context token; the best valid span (or no answer, when some
questions have none and the [CLS] score beats it by more than a threshold chosen on dev) scored with SQuAD EM/F1.

Stores extracted with `--stride` hold each long context as overlapping windows, one example each: training
learns from the windows that hold the answer (SQuAD v2: the others too, as no-answer); decoding answers each
question once, from the best span over all its windows (`featstore.spans.best_answers`), and the metrics count
each question once."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from featstore.extract.inputs import SplitData
from featstore.extract.tasks import IGNORE
from featstore.spans import best_answers
from featstore.store import Split, Store

from ..errors import InputError
from ..metrics import f1_score, squad_metrics
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
    default_context = (2, "lstm")
    segment_ids = True

    def __init__(self, null_answers: bool = False):
        super().__init__()
        self.label_names, self.column = ["start", "end"], "answer"
        self.null_answers = null_answers  # some questions have no answer (SQuAD v2): predict "" when it wins
        self.null_threshold = 0.0  # "" when the no-answer score beats the best span's by more (chosen on dev)

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
        """(N, 2) start/end token positions; windows without the answer are left out of the loss (-100) unless
        some questions have no answer, where they teach the no-answer target like unanswerable questions."""
        y = split.span_targets()
        win = split.span_windows()
        if win is not None and not self.null_answers:
            y = y.copy()
            y[win["answer_in_window"] == 0] = IGNORE
        return y

    def segments(self, gold: Alignment) -> np.ndarray:
        """1 on context tokens (those with characters in the context), 0 on the question and special tokens."""
        return (gold.char_start >= 0).astype(np.int64)

    def loss(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, spec: Any) -> torch.Tensor:
        """Cross-entropy of the start and of the end position over the real tokens."""
        logits = out.float().masked_fill(~mask.unsqueeze(-1), -1e4)  # (B, T, 2)
        if not bool((y[:, 0] != IGNORE).any()):  # a batch of windows without the answer: nothing to learn
            return logits.sum() * 0.0
        return 0.5 * (F.cross_entropy(logits[..., 0], y[:, 0]) + F.cross_entropy(logits[..., 1], y[:, 1]))

    def spans(self, outputs: list[np.ndarray], gold: Alignment) -> tuple[list[tuple[str, int, int]], np.ndarray]:
        """Per example: its question's best valid span (text, char start, char end; ("", -1, -1) when none is
        valid) and the margin of the no-answer score over it (inf when none is valid). Windows of one question
        share one answer: the best over all of them."""
        if gold.question is None:
            found, margin = [], np.full(len(outputs), np.inf)
            for i, lg in enumerate(outputs):
                _, cs, ce = gold.example(i)
                s, e, score = best_span(lg[:, 0], lg[:, 1], cs >= 0, MAX_ANSWER_TOKENS)
                if np.isfinite(score):
                    found.append((gold.gold[i]["context"][cs[s]:ce[e]], int(cs[s]), int(ce[e])))
                    margin[i] = lg[0, 0] + lg[0, 1] - score
                else:
                    found.append(("", -1, -1))
            return found, margin
        rng = [slice(int(gold.offsets[i]), int(gold.offsets[i + 1])) for i in range(len(outputs))]
        answers = best_answers([lg[:, 0] for lg in outputs], [lg[:, 1] for lg in outputs],
                               [gold.char_start[r] >= 0 for r in rng], [gold.char_start[r] for r in rng],
                               [gold.char_end[r] for r in rng], gold.question, MAX_ANSWER_TOKENS)
        by_question = {}
        for qa in answers:
            b = qa.best
            by_question[qa.question] = (("", -1, -1), np.inf) if b is None else (
                (gold.gold[b.window]["context"][b.char_start:b.char_end], b.char_start, b.char_end),
                qa.null_score - b.score)
        per = [by_question[int(q)] for q in gold.question]
        return [p[0] for p in per], np.array([p[1] for p in per], dtype=np.float64)

    def decode(self, outputs: list[np.ndarray], gold: Alignment) -> list[tuple[str, int, int]]:
        """Per example: (answer text, char start, char end); ("", -1, -1) for no answer."""
        found, margin = self.spans(outputs, gold)
        none = ("", -1, -1)
        return [none if not np.isfinite(m) or (self.null_answers and m > self.null_threshold) else f
                for f, m in zip(found, margin)]

    def decide(self, outputs: list[np.ndarray], gold: Alignment) -> dict[str, Any]:
        """SQuAD v2: the no-answer threshold with the best dev F1 (answer "" when the [CLS] score beats the best
        span's by more than it), over every question's margin (as HF's squad_v2 best_f1_thresh)."""
        if not self.null_answers or not len(outputs):
            return {}
        found, margin = self.spans(outputs, gold)
        first = question_firsts(gold)
        margin = np.minimum(margin[first], 1e9)  # no valid span: always no answer
        golds = [list(gold.gold[i]["answers"]) or [""] for i in first]
        f1_answer = np.array([max(f1_score(found[i][0], a) for a in g) for i, g in zip(first, golds)])
        f1_null = np.array([float(g == [""]) for g in golds])
        cands = np.concatenate([[margin.min() - 1.0], np.unique(margin)])  # "" when margin > t
        total = np.array([np.where(margin > t, f1_null, f1_answer).sum() for t in cands])
        # every t in [cands[k], cands[k + 1]) decides alike: take the middle of the first best run, not its edge
        k = int(np.argmax(total))
        last = k
        while last + 1 < len(total) and total[last + 1] == total[k]:
            last += 1
        hi = cands[last + 1] if last + 1 < len(cands) else cands[last] + 2.0
        return {"null_threshold": float((cands[k] + hi) / 2)}

    def apply(self, decision: dict[str, Any]) -> None:
        self.null_threshold = float(decision.get("null_threshold", 0.0))

    def score(self, preds: list[tuple[str, int, int]], gold: Alignment) -> dict[str, float]:
        """EM/F1 per question (windows of one question are scored once)."""
        first = question_firsts(gold)
        return squad_metrics([preds[i][0] for i in first], [gold.gold[i]["answers"] for i in first])

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
        return split, {"texts": list(texts), "questions": list(pairs), "split": split,
                       "gold": [{"context": c, "question": q, "answers": []} for c, q in zip(texts, pairs)]}

    def predict_gold(self, prepared: Any, features: Any) -> Alignment:
        """With windows (a head of a `--stride` store), featurising rewrote the split to one entry per window,
        each knowing its question."""
        return Alignment.of_features(features, prepared["gold"], prepared["split"].extra.get("question"))

    def predict_record(self, i: int, j: int, prepared: Any, outputs: Any, preds: list[Any]) -> dict[str, Any]:
        answer, a, b = preds[j]
        return {"context": prepared["texts"][i], "question": prepared["questions"][i], "answer": answer,
                "start": a if answer else None, "end": b if answer else None}

    def format_record(self, rec: dict[str, Any]) -> str:
        """The answer and its offsets in the context."""
        where = f"[{rec['start']}:{rec['end']}]" if rec["answer"] else "(no answer)"
        return f"{rec['answer']!r} {where}\t{rec['question']}"


def question_firsts(gold: Alignment) -> np.ndarray:
    """Indices of one example per question (the first of its windows); every example without windows."""
    if gold.question is None:
        return np.arange(len(gold.gold))
    return np.sort(np.unique(gold.question, return_index=True)[1])
