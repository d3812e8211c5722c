"""Metrics in numpy (no sklearn/scipy): accuracy, macro-F1, Matthews correlation; Pearson, Spearman; entity
P/R/F1 of tag sequences (seqeval's two modes) and word accuracy; SQuAD EM/F1.

Entity scoring follows seqeval: `mode="strict"` (seqeval's `mode='strict', scheme=IOB2/IOBES`, the primary
metric: an entity is B-X I-X* (or S-X / B-X I-X* E-X) and nothing else) and `mode="default"` (conlleval's
lenient chunking, where an I-X without its B-X still starts an entity). SQuAD scores use the official
script's answer normalisation and take the best score over the gold answers.
"""
from __future__ import annotations

import collections
import math
import re
import string
from typing import Sequence

import numpy as np

from featstore.tagging import split_tag


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


def higher_is_better(metric: str) -> bool:
    return metric != "mse"


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) over seeds."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


# -- tag sequences (seqeval) ------------------------------------------------------------------------------

def _default_chunks(seq: Sequence[str]) -> list[tuple[str, int, int]]:
    """conlleval / seqeval default mode: (type, start, end inclusive)."""
    chunks, prev_p, prev_t, begin = [], "O", "", 0
    for i, tag in enumerate(list(seq) + ["O"]):
        p, t = split_tag(tag)
        if p == "":
            p = "I"
        end = (prev_p in ("E", "S") or (prev_p in ("B", "I") and p in ("B", "S", "O"))
               or (prev_p != "O" and prev_t != t))
        if end and prev_p != "O":
            chunks.append((prev_t, begin, i - 1))
        start = (p in ("B", "S") or (prev_p in ("E", "S", "O") and p in ("E", "I"))
                 or (p != "O" and prev_t != t))
        if start:
            begin = i
        prev_p, prev_t = p, t
    return chunks


def _strict_chunks(seq: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """seqeval strict mode: only well-formed entities count."""
    chunks, i, n = [], 0, len(seq)
    while i < n:
        p, t = split_tag(seq[i])
        if scheme == "IOBES" and p == "S":
            chunks.append((t, i, i))
            i += 1
            continue
        if p != "B":
            i += 1
            continue
        j = i + 1
        while j < n and split_tag(seq[j]) == ("I", t):
            j += 1
        if scheme == "IOB2":
            chunks.append((t, i, j - 1))
            i = j
        elif j < n and split_tag(seq[j]) == ("E", t):
            chunks.append((t, i, j))
            i = j + 1
        else:
            i = j
    return chunks


def entities(seq: Sequence[str], scheme: str = "IOB2", mode: str = "strict") -> list[tuple[str, int, int]]:
    """Entities (type, first word, last word) of one tag sequence."""
    return _strict_chunks(seq, scheme) if mode == "strict" else _default_chunks(seq)


def entity_prf(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], scheme: str = "IOB2",
               mode: str = "strict") -> dict[str, float]:
    """Micro precision, recall, F1 over entities (exact type and boundaries); 0 where undefined (seqeval)."""
    n_gold = n_pred = n_ok = 0
    for g, p in zip(gold, pred, strict=True):
        ge, pe = set(entities(g, scheme, mode)), set(entities(p, scheme, mode))
        n_gold, n_pred, n_ok = n_gold + len(ge), n_pred + len(pe), n_ok + len(ge & pe)
    prec = n_ok / n_pred if n_pred else 0.0
    rec = n_ok / n_gold if n_gold else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1}


def word_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    n = ok = 0
    for g, p in zip(gold, pred, strict=True):
        n += len(g)
        ok += sum(a == b for a, b in zip(g, p, strict=True))
    return ok / n if n else float("nan")


def token_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], scheme: str) -> dict[str, float]:
    """Word accuracy always; strict entity P/R/F1 (primary) and conlleval's F1 for entity schemes."""
    out = {"accuracy": word_accuracy(gold, pred)}
    if scheme in ("IOB2", "IOBES"):
        out.update(entity_prf(gold, pred, scheme, "strict"))
        out["f1_conlleval"] = entity_prf(gold, pred, scheme, "default")["f1"]
    return out


# -- SQuAD (official v1.1 script; empty answers scored as in v2's) ----------------------------------------

def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (SQuAD's evaluate-v1.1.py)."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def f1_score(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:  # an unanswerable question: right only when both are empty
        return float(p == g)
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def squad_metrics(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean EM and F1 (fractions), each the max over a question's gold answers (none: the empty answer)."""
    em = f1 = 0.0
    for p, g in zip(preds, golds, strict=True):
        g = list(g) or [""]
        em += max(exact_match(p, a) for a in g)
        f1 += max(f1_score(p, a) for a in g)
    n = len(preds)
    return {"exact_match": em / n if n else float("nan"), "f1": f1 / n if n else float("nan")}
