"""Batches of one store split, for training code of your own. No torch here: batches are dicts of numpy arrays
(`torch_data.py` turns them into tensors).

An epoch is planned from the seed and the epoch number alone, so every process computes the same plan:

- the split is cut into *chunks*: runs of neighbouring examples inside one segment, about `chunk_tokens` tokens
  each (a chunk is read with one contiguous read per layer);
- chunk order is shuffled, and chunk j goes to shard j mod S (S = DataLoader workers x ranks): every example
  belongs to exactly one chunk and every chunk to exactly one shard, so each example is seen once per epoch;
- a shard reads `buffer_chunks` of its chunks at a time (the bounded shuffle buffer), orders their examples by
  length (ties in random order: storage order is length-sorted, so batches of similar lengths carry little
  padding), cuts batches under the token budget and yields them in random order.

Without shuffling, chunks stay in storage order and batches are contiguous runs of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..store.encoding import is_coded

Split = Any  # a featstore.store.Split; not imported: the store package reaches this one (Split.torch_*)

CHUNK_TOKENS = 16384  # tokens per chunk: a few MiB of features per layer at D = 1536 in float16
BUFFER_CHUNKS = 8  # chunks a shard holds at once: the reach of the shuffle inside an epoch
DEFAULT_BATCH_TOKENS = 8192  # padded tokens per batch when neither budget is given (token features)
DEFAULT_BATCH_SIZE = 256  # examples per batch when neither budget is given (pooled features)
FEATURES = ("tokens", "pooled")
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class BatchSpec:
    """What a batch holds. `layers` None = every stored layer; `targets` names label columns."""
    layers: tuple[int, ...] | None = None
    features: str = "tokens"  # tokens: (B, T, L, D) + mask; pooled: (B, L, D)
    pooling: str = "mean"  # pooled features only
    targets: tuple[str, ...] = ()
    batch_tokens: int | None = None  # budget on padded tokens, B x longest (pooled: B x longest as well)
    batch_size: int | None = None  # cap on examples per batch
    codes: bool = False  # 8-bit stores: hand over codes + row scales + segment (decode on the device)
    unproject: bool = False  # projected stores: map rows back to the model's hidden size

    def checked(self, split: Split) -> "BatchSpec":
        """This spec with defaults filled in for `split`; every problem reported at once (InputError)."""
        store = split.store
        layers = tuple(store.layers if self.layers is None else self.layers)
        problems = []
        if self.features not in FEATURES:
            problems.append(f"features={self.features!r}: use tokens or pooled")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling={self.pooling!r}: use mean or cls")
        missing = [k for k in layers if k not in store.layers]
        if missing or not layers:
            problems.append(f"layers {list(layers)}: the store holds {store.layers}")
        unknown = [c for c in self.targets if c not in store.label_columns]
        if unknown:
            problems.append(f"targets {unknown}: the store's label columns are {list(store.label_columns) or 'none'}")
        for name in ("batch_tokens", "batch_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                problems.append(f"{name}={v!r}: give a positive integer")
        if self.codes and not is_coded(store.encoding):
            problems.append(f"codes=True: the store holds {store.encoding} values, not 8-bit codes")
        if self.codes and self.features != "tokens":
            problems.append("codes=True: only token features are handed over as codes (pooled ones are small)")
        if self.unproject and layers and not missing and store.projection(layers[0]) is None:
            problems.append("unproject=True: the store is not projected")
        if self.unproject and self.codes:
            problems.append("unproject=True with codes=True: decode the codes first, then unproject")
        if problems:
            raise InputError(f"store {store.path}, split {split.name!r}: " + "; ".join(problems))
        tokens, size = self.batch_tokens, self.batch_size
        if tokens is None and size is None:
            tokens, size = (DEFAULT_BATCH_TOKENS, None) if self.features == "tokens" else (None, DEFAULT_BATCH_SIZE)
        return BatchSpec(layers, self.features, self.pooling, tuple(self.targets), tokens, size, self.codes,
                         self.unproject)


def chunk_ranges(split: Split, chunk_tokens: int = CHUNK_TOKENS) -> list[tuple[int, int]]:
    """Example ranges [a, b), each inside one segment, of about `chunk_tokens` tokens (at least one example)."""
    out = []
    lengths = split.lengths
    start = 0
    for seg in split.segments:
        stop = start + int(seg["n_examples"])
        a, acc = start, 0
        for i in range(start, stop):
            acc += int(lengths[i])
            if acc >= chunk_tokens:
                out.append((a, i + 1))
                a, acc = i + 1, 0
        if a < stop:
            out.append((a, stop))
        start = stop
    return out


def cut(idx: np.ndarray, lengths: np.ndarray, batch_tokens: int | None, batch_size: int | None) -> list[np.ndarray]:
    """Consecutive batches of `idx` (in this order), each within both budgets (at least one example)."""
    out, first, longest = [], 0, 0
    for j, i in enumerate(idx):
        longest2 = max(longest, int(lengths[i]))
        n = j - first + 1
        over = (batch_tokens is not None and n * longest2 > batch_tokens) or (batch_size is not None and n > batch_size)
        if over and n > 1:
            out.append(idx[first:j])
            first, longest2 = j, int(lengths[i])
        longest = longest2
    if len(idx) > first:
        out.append(idx[first:])
    return out


def shard_windows(lengths: np.ndarray, chunks: Sequence[tuple[int, int]], spec: BatchSpec, *, shuffle: bool,
                  seed: int, epoch: int, shard: int, n_shards: int,
                  buffer_chunks: int = BUFFER_CHUNKS) -> Iterator[tuple[list[tuple[int, int]], list[np.ndarray]]]:
    """One shard's epoch: (the chunks to read, the batches cut from them as storage indices), window by window."""
    rng = np.random.default_rng([seed, epoch]) if shuffle else None
    order = rng.permutation(len(chunks)) if rng is not None else np.arange(len(chunks))
    mine = [chunks[j] for j in order[shard::n_shards]]
    for w in range(0, len(mine), buffer_chunks):
        window = mine[w:w + buffer_chunks]
        idx = np.concatenate([np.arange(a, b) for a, b in window])
        if rng is not None:
            idx = rng.permutation(idx)
            idx = idx[np.argsort(-lengths[idx], kind="stable")]  # longest first, ties in random order
        batches = cut(idx, lengths, spec.batch_tokens, spec.batch_size)
        if rng is not None:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        yield window, batches


class BatchReader:
    """Reads windows of chunks of one split and assembles padded numpy batches from them."""

    def __init__(self, split: Split, spec: BatchSpec, chunk_tokens: int = CHUNK_TOKENS):
        self.split, self.spec = split, spec.checked(split)
        self.chunks = chunk_ranges(split, chunk_tokens)
        self.lengths = split.lengths
        self.targets = {c: split.targets(c) for c in self.spec.targets}
        self._seg_first = np.concatenate([[0], np.cumsum([s["n_examples"] for s in split.segments])])
        self._maps = [split.store.projection(k) for k in self.spec.layers] if self.spec.unproject else None

    def epoch(self, *, shuffle: bool = True, seed: int = 0, epoch: int = 0, shard: int = 0, n_shards: int = 1,
              buffer_chunks: int = BUFFER_CHUNKS) -> Iterator[dict[str, Any]]:
        """Batches of one shard's share of one epoch."""
        for window, batches in shard_windows(self.lengths, self.chunks, self.spec, shuffle=shuffle, seed=seed,
                                             epoch=epoch, shard=shard, n_shards=n_shards,
                                             buffer_chunks=buffer_chunks):
            data = self.read(window)
            for idx in batches:
                yield self.batch(data, idx)

    # -- reading ---------------------------------------------------------------------------------------------
    def read(self, window: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """Features of the window's examples as flat rows: `rows` (n, L, D) (+ `scale` (n, L), `segment` (n,)
        for codes), `start[i]` = first row of the window's i-th example, `where` maps storage index -> i."""
        ids = np.concatenate([np.arange(a, b) for a, b in window])
        per_row = self.lengths[ids] if self.spec.features == "tokens" else np.ones(len(ids), np.int64)
        start = np.concatenate([[0], np.cumsum(per_row)])[:-1]
        parts = [self._read_chunk(a, b) for a, b in window]
        data = {k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
        sorter = np.argsort(ids)
        data.update(ids=ids[sorter], pos=sorter, start=start)
        return data

    def _read_chunk(self, a: int, b: int) -> dict[str, np.ndarray]:
        sp, spec = self.split, self.spec
        if spec.features == "pooled":
            seg = int(np.searchsorted(self._seg_first, a, side="right") - 1)
            base = int(self._seg_first[seg])
            rows = [sp.decoded(seg, f"L{k}/{spec.pooling}", a - base, b - base) for k in spec.layers]
            return {"rows": self._unprojected(np.stack(rows, axis=1))}  # (n, L, D)
        ta, tb = int(sp.offsets[a]), int(sp.offsets[b])
        if spec.codes:
            parts = [sp.token_codes(k, ta, tb) for k in spec.layers]
            return {"rows": np.stack([p[0] for p in parts], axis=1), "scale": np.stack([p[1] for p in parts], axis=1),
                    "segment": parts[0][2]}
        return {"rows": self._unprojected(np.stack([sp.tokens(k, ta, tb) for k in spec.layers], axis=1))}

    def _unprojected(self, x: np.ndarray) -> np.ndarray:
        """(n, L, N) projected rows -> (n, L, H) in the model's space: x @ basis.T + mean (what PCA kept)."""
        if not self._maps:
            return x
        return np.stack([x[:, j].astype(np.float32) @ basis.T + mean for j, (mean, basis) in enumerate(self._maps)],
                        axis=1)

    # -- assembling ------------------------------------------------------------------------------------------
    def batch(self, data: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
        """Storage indices `idx` of a read window -> a batch: `features`, `mask` and `lengths` (tokens),
        `scale` and `segment` (codes), `index`, `ids` and `targets` ({column: (B,)})."""
        local = data["pos"][np.searchsorted(data["ids"], idx)]
        rows, first = data["rows"], data["start"][local]
        out: dict[str, Any] = {"index": idx.astype(np.int64), "ids": [self.split.example_ids[i] for i in idx]}
        if self.spec.features == "pooled":
            out["features"] = rows[first].astype(np.float32)  # (B, L, D)
        else:
            lens = self.lengths[idx]
            B, T = len(idx), int(lens.max())
            L, D = rows.shape[1], rows.shape[2]
            x = np.zeros((B, T, L, D), dtype=rows.dtype if self.spec.codes else np.float32)
            mask = np.zeros((B, T), dtype=bool)
            scale = np.zeros((B, T, L), np.float32) if self.spec.codes else None
            for b, (f, n) in enumerate(zip(first, lens)):
                x[b, :n], mask[b, :n] = rows[f:f + n], True
                if scale is not None:
                    scale[b, :n] = data["scale"][f:f + n]
            out.update(features=x, mask=mask, lengths=lens.astype(np.int64))
            if scale is not None:
                out.update(scale=scale, segment=data["segment"][first].astype(np.int64))
        out["targets"] = {c: y[idx] for c, y in self.targets.items()}
        return out

    def channel_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(S, L, D) shift and gain of the split's 8-bit token codes: row = codes * scale * gain[seg] + shift[seg]."""
        tables = [self.split.channel_tables(k) for k in self.spec.layers]
        return np.stack([t[0] for t in tables], axis=1), np.stack([t[1] for t in tables], axis=1)
