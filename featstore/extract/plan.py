"""Tokenize once, then plan storage order, segments and length-bucketed batches under a token budget."""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from .inputs import SplitData


@dataclass
class Tokenized:
    input_ids: list[list[int] | None]  # None: a row this process has not tokenized (another rank's)
    token_type_ids: list[list[int] | None] | None
    lengths: np.ndarray  # (N,)
    truncated: int  # examples longer than max_length before truncation
    extra: dict[str, list[np.ndarray]] | None = None  # token/span tasks: per-token word index, char offsets


def tokenize(tokenizer, split: SplitData, max_length: int, truncation: str, chunk: int = 4096,
             rows: np.ndarray | None = None, into: Tokenized | None = None) -> Tokenized:
    """Tokenize every row, or only `rows` (into `into`, if given): under torchrun each rank tokenizes a slice
    to plan, then only the rows of its own segments, so start-up does not grow with the number of ranks."""
    n = len(split)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    tok = into or Tokenized([None] * n, [None] * n, np.zeros(n, dtype=np.int64), 0)
    for a in range(0, len(rows), chunk):
        sel = rows[a:a + chunk]
        texts = [split.texts[i] for i in sel]
        pairs = [split.pairs[i] for i in sel] if split.pairs is not None else None
        enc = tokenizer(texts, pairs, truncation=truncation, max_length=max_length, verbose=False)
        types = enc.get("token_type_ids")
        for j, i in enumerate(sel):
            tok.input_ids[i] = enc["input_ids"][j]
            if tok.token_type_ids is not None:
                tok.token_type_ids[i] = types[j] if types is not None else None
        if types is None:
            tok.token_type_ids = None
        tok.lengths[sel] = [len(x) for x in enc["input_ids"]]
    if into is None:
        # Only examples that hit the limit can have been cut: re-tokenize just those, untruncated, to count.
        for i in rows[tok.lengths[rows] >= max_length]:
            pair = split.pairs[i] if split.pairs is not None else None
            if len(tokenizer(split.texts[i], pair, truncation=False, verbose=False)["input_ids"]) > max_length:
                tok.truncated += 1
    return tok


@dataclass
class Segment:
    split: str
    index: int
    examples: np.ndarray  # input rows, in storage order
    batches: list[np.ndarray] = field(default_factory=list)  # slices of `examples`

    @property
    def name(self) -> str:
        return f"s{self.index:05d}"


def storage_order(lengths: np.ndarray) -> np.ndarray:
    """Longest first (out-of-memory shows up at once), ties by input row: deterministic."""
    return np.lexsort((np.arange(len(lengths)), -lengths))


def plan_segments(split: str, lengths: np.ndarray, segment_tokens: int) -> list[Segment]:
    """Cut the storage order into segments of about `segment_tokens` tokens (at least one example each).

    Depends only on lengths and the recorded segment size, never on batch size or device, so a resumed
    or distributed run plans exactly the same segments.
    """
    order = storage_order(lengths)
    segments, start, tokens = [], 0, 0
    for pos, row in enumerate(order):
        tokens += int(lengths[row])
        if tokens >= segment_tokens:
            segments.append(Segment(split, len(segments), order[start:pos + 1]))
            start, tokens = pos + 1, 0
    if start < len(order):
        segments.append(Segment(split, len(segments), order[start:]))
    return segments


def plan_batches(segment: Segment, lengths: np.ndarray, batch_tokens: int, pad_multiple: int = 8) -> None:
    """Greedy length-bucketed batches: padded size (count x longest, rounded up) stays within the budget."""
    rows = segment.examples
    batches, start = [], 0
    while start < len(rows):
        longest = int(lengths[rows[start]])  # rows are sorted longest first
        padded = -(-longest // pad_multiple) * pad_multiple
        size = max(1, batch_tokens // max(padded, 1))
        batches.append(rows[start:start + size])
        start += size
    segment.batches = batches


def pad_batch(sequences: list[list[int]], pad_id: int = 0):
    """Right-pad token id lists into (B, T) `input_ids` and `attention_mask` long tensors."""
    import torch

    T = max(len(x) for x in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for b, seq in enumerate(sequences):
        ids[b, :len(seq)] = torch.as_tensor(seq)
        mask[b, :len(seq)] = 1
    return ids, mask


def assign_shares(costs: list[int], world: int) -> list[int]:
    """Rank of each item: greedy longest-processing-time (largest first onto the least-loaded rank).

    Balances ranks by tokens instead of by index, so no rank idles at the end. Pure function of `costs` and
    `world` with ties broken by position and rank number, so every rank computes the same assignment
    without talking to the others. LPT is within 4/3 of the best possible makespan.
    """
    owner = [0] * len(costs)
    load = [(0, r) for r in range(max(1, world))]
    heapq.heapify(load)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        total, r = heapq.heappop(load)
        owner[i] = r
        heapq.heappush(load, (total + int(costs[i]), r))
    return owner
