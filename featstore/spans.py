"""Answers of a span task per question, from per-window start/end scores (stores extracted with `--stride`).

A question whose context was longer than `--max-length` is stored as several overlapping windows. A head scores
every window; the question's answer is the best valid span over all of them: highest start + end score, end at
or after start, at most `max_answer` tokens, both on context tokens. A span that lies in the overlap of two
windows is one answer (the same characters of the context), kept once with its higher score, so each question
is answered, and scored, once. Pure numpy: heads call it after inference; nothing here needs a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Span:
    """One candidate answer: characters [char_start, char_end) of the context, found in `window` (an index into
    the windows given) at tokens start..end (inclusive) of that window."""

    char_start: int
    char_end: int
    score: float  # start score + end score
    window: int
    start: int
    end: int


@dataclass
class QuestionAnswer:
    question: int
    spans: list[Span] = field(default_factory=list)  # best first, distinct character spans; empty: no valid span
    null_score: float = float("inf")  # lowest score of token 0 (start + end) over the question's windows, as HF

    @property
    def best(self) -> Span | None:
        return self.spans[0] if self.spans else None


def window_candidates(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, max_answer: int,
                      k: int) -> list[tuple[float, int, int]]:
    """The k best valid spans (score, start, end) of one window, best first; O(T * max_answer)."""
    s = np.where(allowed, start, -np.inf).astype(np.float64)  # (T,)
    e = np.where(allowed, end, -np.inf).astype(np.float64)
    T = len(s)
    scores, starts, ends = [], [], []
    for d in range(min(max_answer, T)):  # spans of d + 1 tokens
        scores.append(s[:T - d] + e[d:])
        starts.append(np.arange(T - d))
        ends.append(np.arange(d, T))
    if not scores:
        return []
    score, first, last = np.concatenate(scores), np.concatenate(starts), np.concatenate(ends)
    ok = np.isfinite(score)
    score, first, last = score[ok], first[ok], last[ok]
    if len(score) > k:
        top = np.argpartition(-score, k - 1)[:k]
        score, first, last = score[top], first[top], last[top]
    order = np.lexsort((first, -score))  # best first; ties: the earlier span
    return [(float(score[i]), int(first[i]), int(last[i])) for i in order]


def best_answers(start: Sequence[np.ndarray], end: Sequence[np.ndarray], allowed: Sequence[np.ndarray],
                 char_start: Sequence[np.ndarray], char_end: Sequence[np.ndarray], question: np.ndarray,
                 max_answer: int = 30, n_best: int = 1) -> list[QuestionAnswer]:
    """Per question (ascending question number), its `n_best` distinct answers over all its windows.

    Per window i: `start[i]`, `end[i]` (T_i,) scores; `allowed[i]` (T_i,) bool, the context tokens;
    `char_start[i]`, `char_end[i]` (T_i,) each token's characters in the context; `question[i]` the question
    it belongs to (e.g. a store's `span_windows()["question"]`). Windows of a question may come in any order.
    """
    if max_answer < 1 or n_best < 1:
        raise ValueError(f"max_answer ({max_answer}) and n_best ({n_best}) must be positive")
    question = np.asarray(question)
    n = len(question)
    if not all(len(x) == n for x in (start, end, allowed, char_start, char_end)):
        raise ValueError("start, end, allowed, char_start, char_end and question must have one entry per window")
    out: dict[int, QuestionAnswer] = {}
    pooled: dict[int, list[Span]] = {}
    for i in range(n):
        q = int(question[i])
        qa = out.setdefault(q, QuestionAnswer(q))
        if len(start[i]):
            qa.null_score = min(qa.null_score, float(start[i][0]) + float(end[i][0]))
        cs, ce = np.asarray(char_start[i]), np.asarray(char_end[i])
        for score, a, b in window_candidates(np.asarray(start[i]), np.asarray(end[i]), np.asarray(allowed[i], bool),
                                             max_answer, n_best):
            pooled.setdefault(q, []).append(Span(int(cs[a]), int(ce[b]), score, i, a, b))
    for q, spans in pooled.items():
        seen: set[tuple[int, int]] = set()
        for sp in sorted(spans, key=lambda x: (-x.score, x.window, x.start)):
            if (sp.char_start, sp.char_end) not in seen:  # the same characters from two windows: one answer
                seen.add((sp.char_start, sp.char_end))
                out[q].spans.append(sp)
                if len(out[q].spans) == n_best:
                    break
    return [out[q] for q in sorted(out)]
