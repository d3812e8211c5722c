"""`heads predict` for token and span heads: raw text -> backbone (the store's settings) -> head -> entities
with character offsets, or an answer with its offsets in the context.

Tokenization and alignment are featstore's own (`tokenize_task`), so a text that is in the store gets the same
features and the same word/offset alignment here as at extraction.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch

from featstore.extract.inputs import SplitData
from featstore.extract.tasks import TaskInfo, tokenize_task
from featstore.store.encoding import from_stored

from .artifacts import LoadedHead
from .data import ArrayTokens, Loader
from .errors import HeadError, InputError
from .predict import head_projection
from .seqmetrics import entities
from .seqtask import Alignment, SeqTask, infer_tokens
from .task import batch_dtype


def seq_task_of(head: LoadedHead) -> SeqTask:
    info = head.meta.get("seq_task") or {}
    return SeqTask(head.spec.task, list(head.label_names), info.get("scheme"), bool(info.get("null_answers")))


def _features(head: LoadedHead, lm: Any, split: SplitData, info: TaskInfo, batch_size: int,
              device: str) -> tuple[ArrayTokens, np.ndarray, Any]:
    """Token features and alignment of `split` as extraction stores them; returns (source, order, tokenized)."""
    from featstore.extract.forward import forward_batch
    from featstore.extract.models import truncate_after
    from featstore.extract.plan import storage_order

    settings = head.meta["backbone"]["settings"]
    tok = tokenize_task(lm.tokenizer, split, info, settings["max_length"], settings["truncation"])
    layers = head.layers
    if max(layers) > lm.num_layers:
        raise HeadError(f"head {head.run} reads layer {max(layers)}, but its backbone has {lm.num_layers} layers")
    truncate_after(lm.model, max(layers))
    compute = (head.meta["backbone"].get("runtime") or {}).get("compute_dtype", "float32") \
        if device.startswith("cuda") else "float32"
    lm.model.to(device=device, dtype=getattr(torch, compute))
    order = storage_order(tok.lengths)
    projection = head_projection(head, layers, device)  # a projected store: the same map for new texts
    parts = [forward_batch(lm, tok, split, order[a:a + batch_size], layers, settings["dtype"], device, {}, projection)
             for a in range(0, len(order), batch_size)]
    flat = np.stack([from_stored(np.concatenate([p[f"L{k}/tokens"] for p in parts]), settings["dtype"])
                     for k in layers], axis=1)  # (N_tokens, L, D)
    return ArrayTokens(flat, tok.lengths[order]), order, tok


def predict_seq(head: LoadedHead, lm: Any, texts: Sequence[str], questions: Sequence[str] | None,
                batch_size: int, device: torch.device) -> list[dict[str, Any]]:
    """Token heads: `texts` are sentences (split on whitespace into words). Span heads: `texts` are contexts,
    `questions` one question each."""
    task = seq_task_of(head)
    n = len(texts)
    if task.task == "span":
        if questions is None or len(questions) != n:
            raise InputError("a span head answers questions: give one --question per --context")
        split = SplitData("predict", "<predict>", list(questions), list(texts), [f"q-{i}" for i in range(n)])
        split.extra = {"answers": [[] for _ in range(n)]}
        gold = [{"context": c, "question": q, "answers": []} for c, q in zip(texts, questions)]
    else:
        spans = [[(m.start(), m.end()) for m in re.finditer(r"\S+", t)] for t in texts]
        if any(not s for s in spans):
            raise InputError("a token head tags words: every --text needs at least one word")
        words = [[t[a:b] for a, b in s] for t, s in zip(texts, spans)]
        split = SplitData("predict", "<predict>", [" ".join(w) for w in words], None, [f"t-{i}" for i in range(n)])
        split.extra = {"words": words, "tag_ids": [np.zeros(len(w), dtype=np.int64) for w in words]}
        gold = [{"words": w, "tags": []} for w in words]
    source, order, tok = _features(head, lm, split, TaskInfo(task.task), batch_size, str(device))
    loader = Loader(source, None, batch_size, shuffle=False, dtype=batch_dtype(device, head.meta["store"]["dtype"]))
    logits = infer_tokens(head.model, loader, device)  # storage order
    lengths = tok.lengths[order]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    cat = {k: np.concatenate([tok.extra[k][r] for r in order]) for k in ("word_index", "char_start", "char_end")}
    align = Alignment(offsets=offsets, word_index=cat["word_index"], char_start=cat["char_start"],
                      char_end=cat["char_end"], gold=[gold[r] for r in order])
    preds = task.decode(logits, align)
    recs: list[dict[str, Any]] = [{} for _ in range(n)]
    for j, r in enumerate(order):
        r = int(r)
        if task.task == "span":
            answer, a, b = preds[j]
            recs[r] = {"context": texts[r], "question": questions[r], "answer": answer,
                       "start": a if answer else None, "end": b if answer else None}
        else:
            tags = preds[j]
            ents = []
            for kind, w0, w1 in entities(tags, task.scheme or "IOB2", "strict") if task.scheme != "none" else []:
                a, b = spans[r][w0][0], spans[r][w1][1]
                ents.append({"type": kind, "text": texts[r][a:b], "start": a, "end": b})
            recs[r] = {"text": texts[r], "words": words[r], "tags": tags, "entities": ents}
    return recs
