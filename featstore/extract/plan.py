"""Tokenize once, then plan storage order, segments and length-bucketed batches under a token budget."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .inputs import SplitData


@dataclass
class Tokenized:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    lengths: np.ndarray  # (N,)
    truncated: int  # examples longer than max_length before truncation
    extra: dict[str, list[np.ndarray]] | None = None  # token/span tasks: per-token word index, char offsets


def tokenize(tokenizer, split: SplitData, max_length: int, truncation: str, chunk: int = 4096) -> Tokenized:
    ids: list[list[int]] = []
    types: list[list[int]] | None = []
    for a in range(0, len(split), chunk):
        texts = split.texts[a:a + chunk]
        pairs = split.pairs[a:a + chunk] if split.pairs is not None else None
        enc = tokenizer(texts, pairs, truncation=truncation, max_length=max_length, verbose=False)
        ids += enc["input_ids"]
        if "token_type_ids" in enc and types is not None:
            types += enc["token_type_ids"]
        else:
            types = None
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    # Only examples that hit the limit can have been cut: re-tokenize just those, untruncated, to count.
    full = np.flatnonzero(lengths >= max_length)
    truncated = 0
    for i in full:
        pair = split.pairs[i] if split.pairs is not None else None
        if len(tokenizer(split.texts[i], pair, truncation=False, verbose=False)["input_ids"]) > max_length:
            truncated += 1
    return Tokenized(ids, types, lengths, truncated)


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
