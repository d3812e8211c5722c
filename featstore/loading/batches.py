"""Batches of one store split: the one way this project batches a store, for `split.torch_iterable` and for
`heads` training alike. No torch here: batches are dicts of numpy arrays (`torch_data.py` turns them into tensors,
`heads.data` into its own batches).

An epoch is planned from the lengths, the seed and the epoch number alone, so every process computes the same plan
and a split held in RAM gives the very same batches as one streamed from the store:

- the split is cut into *chunks*: runs of neighbouring examples inside one segment, about `chunk_tokens` tokens
  each (CHUNK_ROWS examples for pooled features); a chunk is read with one contiguous read per layer;
- chunk order is shuffled, and chunk j goes to shard j mod S (S = DataLoader workers x ranks): every example
  belongs to exactly one chunk and every chunk to exactly one shard, so each example is seen once per epoch;
- a shard reads `buffer_chunks` of its chunks at a time (the bounded shuffle buffer). Token features: their
  examples are put in length order (ties random) and each moved by up to JITTER_BATCHES batches, so a batch holds
  examples of similar lengths (little padding) yet changes members every epoch; pooled features have no padding
  and are shuffled freely. Batches are cut under the budgets and yielded in random order, while the next window
  is read on a thread.

Without shuffling, chunks stay in storage order and batches are contiguous runs of it.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..store.encoding import decode, is_coded, read_itemsize

Split = Any  # a featstore.store.Split; not imported: the store package reaches this one (Split.torch_*)

CHUNK_TOKENS = 16384  # tokens per chunk: a few MiB of features per layer at D = 1536 in float16
BUFFER_CHUNKS = 8  # chunks a shard holds at once: the reach of the shuffle inside an epoch
CHUNK_ROWS = 4096  # examples per chunk of pooled features (one vector each: no tokens to count)
CHUNK_BYTES = 128 << 20  # with chunk_tokens=None: a chunk holds at most this many bytes of token features ...
WINDOW_BYTES = 1 << 30  # ... and with buffer_chunks=None a window at most this many (two are alive when streaming)
JITTER_BATCHES = 2  # how far an example moves from length order: batches change members every epoch (a batch
# that kept its members epoch after epoch visibly hurt Y-Tuning on small data)
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


def held_token_bytes(store: Any, n_layers: int, codes: bool) -> int:
    """Bytes one token's features of `n_layers` layers take in RAM as a reader holds them: 8-bit codes stay codes
    (1 byte per value, a float32 scale per layer, a segment index), floats as read."""
    if codes:
        return n_layers * (store.width + 4) + 4
    return n_layers * store.width * read_itemsize(store.dtype)


def chunk_ranges(lengths: np.ndarray, segment_sizes: Sequence[int], chunk_tokens: int = CHUNK_TOKENS
                 ) -> list[tuple[int, int]]:
    """Example ranges [a, b), each inside one segment, of about `chunk_tokens` tokens (at least one example)."""
    out = []
    start = 0
    for size in segment_sizes:
        stop = start + int(size)
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


def _jittered(idx: np.ndarray, lengths: np.ndarray, batch_tokens: int | None, batch_size: int | None,
              rng: np.random.Generator) -> np.ndarray:
    """`idx` in length order (longest first, ties random), each example moved by up to JITTER_BATCHES batches."""
    idx = rng.permutation(idx)
    idx = idx[np.argsort(-lengths[idx], kind="stable")]
    per_batch = batch_size or len(idx)
    if batch_tokens is not None:
        per_batch = min(per_batch, max(1, int(batch_tokens // max(float(lengths[idx].mean()), 1.0))))
    key = np.arange(len(idx)) + rng.uniform(0, JITTER_BATCHES * per_batch, len(idx))
    return idx[np.argsort(key, kind="stable")]


def plan_windows(lengths: np.ndarray, chunks: Sequence[tuple[int, int]], *, batch_tokens: int | None,
                 batch_size: int | None, by_length: bool = True, shuffle: bool, seed: int = 0, epoch: int = 0,
                 shard: int = 0, n_shards: int = 1, buffer_chunks: int = BUFFER_CHUNKS
                 ) -> list[tuple[list[tuple[int, int]], list[np.ndarray]]]:
    """One shard's epoch: (the chunks to read, the batches cut from them as storage indices), window by window.
    `by_length`: keep lengths alike inside a batch (token features); pooled ones are shuffled freely."""
    rng = np.random.default_rng([seed, epoch]) if shuffle else None
    order = rng.permutation(len(chunks)) if rng is not None else np.arange(len(chunks))
    mine = [chunks[j] for j in order[shard::n_shards]]
    out = []
    for w in range(0, len(mine), buffer_chunks):
        window = mine[w:w + buffer_chunks]
        idx = np.concatenate([np.arange(a, b) for a, b in window])
        if rng is not None:
            idx = _jittered(idx, lengths, batch_tokens, batch_size, rng) if by_length else rng.permutation(idx)
        batches = cut(idx, lengths, batch_tokens, batch_size)
        if rng is not None:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        out.append((window, batches))
    return out


class BatchReader:
    """Reads windows of chunks of one split (or holds the whole split in RAM) and assembles padded numpy batches.

    `in_ram`: read the split once and serve every window from memory (8-bit stores stay codes when `spec.codes`);
    the plan, and so the batches, are the same either way. `chunk_tokens=None` sizes chunks by bytes (CHUNK_BYTES),
    so that windows of wide models stay bounded too."""

    def __init__(self, split: Split, spec: BatchSpec, chunk_tokens: int | None = CHUNK_TOKENS, in_ram: bool = False):
        self.split, self.spec = split, spec.checked(split)
        self.targets = {c: split.targets(c) for c in self.spec.targets}
        self._maps = [split.store.projection(k) for k in self.spec.layers] if self.spec.unproject else None
        self._ids: list[str] | None = None
        self._layout(split.lengths, [int(s["n_examples"]) for s in split.segments],
                     held_token_bytes(split.store, len(self.spec.layers), self.spec.codes), chunk_tokens)
        self._held = self._hold(self._read_range(0, len(self.lengths))) if in_ram else None

    @classmethod
    def over_arrays(cls, rows: np.ndarray, lengths: np.ndarray | None = None) -> "BatchReader":
        """Features already in memory, e.g. new texts run through the backbone: token rows (n_tokens, L, D) with
        `lengths` per example, or pooled vectors (n, L, D) without. One segment, ids "0".. in order."""
        self = cls.__new__(cls)
        tokens = lengths is not None
        self.split, self._maps, self.targets = None, None, {}
        self.spec = BatchSpec(tuple(range(rows.shape[1])), "tokens" if tokens else "pooled")
        n = len(lengths) if tokens else len(rows)
        self._ids = [str(i) for i in range(n)]
        self._layout(lengths if tokens else np.ones(n), [n], int(rows.shape[1] * rows.shape[2] * rows.dtype.itemsize),
                     None)
        self._held = self._hold({"rows": rows})
        return self

    def _layout(self, lengths: np.ndarray, segment_sizes: list[int], token_bytes: int, chunk_tokens: int | None
                ) -> None:
        """Lengths, offsets, segments, chunks and the default window of a split; `chunk_tokens=None` sizes chunks
        by bytes (CHUNK_BYTES) and windows of token features too (WINDOW_BYTES)."""
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)  # token rows of example i
        self.segment_sizes, self.token_bytes = segment_sizes, token_bytes
        self._seg_first = np.concatenate([[0], np.cumsum(segment_sizes)]).astype(np.int64)
        if chunk_tokens is None:
            chunk_tokens = min(CHUNK_TOKENS, max(256, CHUNK_BYTES // max(token_bytes, 1)))
        if self.spec.features == "pooled":
            self.chunks = chunk_ranges(np.ones(len(self.lengths), np.int64), segment_sizes, CHUNK_ROWS)
            self.buffer_chunks = BUFFER_CHUNKS
            return
        self.chunks = chunk_ranges(self.lengths, segment_sizes, chunk_tokens)
        chunk = max((int(self.offsets[b] - self.offsets[a]) for a, b in self.chunks), default=1) * token_bytes
        self.buffer_chunks = max(1, min(BUFFER_CHUNKS, WINDOW_BYTES // max(chunk, 1)))  # plan()'s default

    def _hold(self, data: dict[str, Any]) -> dict[str, Any]:
        """The whole split's rows as one read window (nothing copied per window)."""
        n = len(self.lengths)
        # example i: rows [e[i], e[i + 1]) (a pooled example is one row)
        self._edges = self.offsets if self.spec.features == "tokens" else np.arange(n + 1, dtype=np.int64)
        return {**data, "ids": np.arange(n), "pos": np.arange(n), "start": self._edges[:-1]}

    @property
    def in_ram(self) -> bool:
        return self._held is not None

    @property
    def held(self) -> dict[str, Any] | None:
        """The split's rows held in RAM (`rows`, and `scale`, `segment` for codes), or None when streamed."""
        return self._held

    @property
    def example_ids(self) -> list[str]:
        if self._ids is None:
            self._ids = self.split.example_ids
        return self._ids

    def __len__(self) -> int:
        return len(self.lengths)

    def plan(self, *, shuffle: bool = True, seed: int = 0, epoch: int = 0, shard: int = 0, n_shards: int = 1,
             buffer_chunks: int | None = None, batch_tokens: int | None = None, batch_size: int | None = None
             ) -> list[tuple[list[tuple[int, int]], list[np.ndarray]]]:
        """The epoch's windows and batches (`plan_windows`); budgets default to the spec's, `buffer_chunks` to
        BUFFER_CHUNKS chunks or fewer, so that a window of token features holds at most WINDOW_BYTES."""
        buffer_chunks = self.buffer_chunks if buffer_chunks is None else buffer_chunks
        if batch_tokens is None and batch_size is None:
            batch_tokens, batch_size = self.spec.batch_tokens, self.spec.batch_size
        return plan_windows(self.lengths, self.chunks, batch_tokens=batch_tokens, batch_size=batch_size,
                            by_length=self.spec.features == "tokens", shuffle=shuffle, seed=seed, epoch=epoch,
                            shard=shard, n_shards=n_shards, buffer_chunks=buffer_chunks)

    def windows(self, plan: Sequence[tuple[list[tuple[int, int]], list[np.ndarray]]]
                ) -> Iterator[tuple[dict[str, Any], list[np.ndarray]]]:
        """(read data, batches) of each planned window; the next window is read on a thread while this one's
        batches are used, so reading overlaps with batching and training."""
        if self._held is not None:
            for _, batches in plan:
                yield self._held, batches
            return
        with ThreadPoolExecutor(1, thread_name_prefix="featstore-read") as pool:
            ahead = pool.submit(self.read, plan[0][0]) if plan else None
            for w in range(len(plan)):
                data = ahead.result()
                ahead = pool.submit(self.read, plan[w + 1][0]) if w + 1 < len(plan) else None
                yield data, plan[w][1]

    def epoch(self, *, shuffle: bool = True, seed: int = 0, epoch: int = 0, shard: int = 0, n_shards: int = 1,
              buffer_chunks: int | None = BUFFER_CHUNKS) -> Iterator[dict[str, Any]]:
        """Batches of one shard's share of one epoch."""
        plan = self.plan(shuffle=shuffle, seed=seed, epoch=epoch, shard=shard, n_shards=n_shards,
                         buffer_chunks=buffer_chunks)
        for data, batches in self.windows(plan):
            for idx in batches:
                yield self.batch(data, idx)

    # -- reading ---------------------------------------------------------------------------------------------
    def read(self, window: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """Features of the window's examples as flat rows: `rows` (n, L, D) (+ `scale` (n, L), `segment` (n,)
        for codes); `ids` (sorted storage indices) and `pos` map an example to its place i in the window, whose rows
        start at `start[i]`."""
        if self._held is not None:
            return self._held
        ids = np.concatenate([np.arange(a, b) for a, b in window])
        per_row = self.lengths[ids] if self.spec.features == "tokens" else np.ones(len(ids), np.int64)
        start = np.concatenate([[0], np.cumsum(per_row)])[:-1]
        if self.spec.features == "tokens" and not self.spec.codes and not self._maps:
            data = {"rows": self._window_rows(window, int(per_row.sum()))}
        else:
            parts = [self._read_range(a, b) for a, b in window]
            data = {k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
        sorter = np.argsort(ids)
        data.update(ids=ids[sorter], pos=sorter, start=start)
        return data

    def _read_range(self, a: int, b: int) -> dict[str, np.ndarray]:
        """Rows of examples [a, b) (may span segments), every layer side by side: (n, L, D)."""
        sp, spec = self.split, self.spec
        if spec.features == "pooled":
            parts = []
            for seg in range(len(self.segment_sizes)):
                lo, hi = max(a, int(self._seg_first[seg])), min(b, int(self._seg_first[seg + 1]))
                if lo < hi:
                    base = int(self._seg_first[seg])
                    parts.append(np.stack([sp.decoded(seg, f"L{k}/{spec.pooling}", lo - base, hi - base)
                                           for k in spec.layers], axis=1))
            if not parts:
                return {"rows": np.zeros((0, len(spec.layers), sp.store.width), np.float32)}
            return {"rows": self._unprojected(np.concatenate(parts) if len(parts) > 1 else parts[0])}
        if not spec.codes:
            return {"rows": self._unprojected(self._window_rows([(a, b)], int(self.offsets[b] - self.offsets[a])))}
        parts = self._layer_reads(a, b)
        return {"rows": np.stack([p[0] for p in parts], axis=1), "scale": np.stack([p[1] for p in parts], axis=1),
                "segment": parts[0][2]}

    def _layer_reads(self, a: int, b: int) -> list[Any]:
        """Token rows of examples [a, b), one contiguous read per layer, the layers read side by side."""
        sp, ta, tb = self.split, int(self.offsets[a]), int(self.offsets[b])
        read = (lambda k: sp.token_codes(k, ta, tb)) if self.spec.codes else (lambda k: sp.tokens(k, ta, tb))
        with ThreadPoolExecutor(min(len(self.spec.layers), 4)) as pool:
            return list(pool.map(read, self.spec.layers))

    def _window_rows(self, window: Sequence[tuple[int, int]], n_rows: int) -> np.ndarray:
        """Float token rows (n_rows, L, D) of a window's chunks, each layer's read copied once into place."""
        rows, at = None, 0
        for a, b in window:
            parts = self._layer_reads(a, b)
            if rows is None:
                rows = np.empty((n_rows, len(parts), parts[0].shape[-1]), dtype=parts[0].dtype)
            for j, part in enumerate(parts):
                rows[at:at + len(part), j] = part
            at += len(parts[0])
        return rows

    def _unprojected(self, x: np.ndarray) -> np.ndarray:
        """(n, L, N) projected rows -> (n, L, H) in the model's space: x @ basis.T + mean (what PCA kept)."""
        if not self._maps:
            return x
        return np.stack([x[:, j].astype(np.float32) @ basis.T + mean for j, (mean, basis) in enumerate(self._maps)],
                        axis=1)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Float32 rows of examples [start, stop) (start < stop): (n_tokens, L, D) of their tokens, or (n, L, D)
        pooled; 8-bit codes decoded."""
        if self._held is not None:
            a, b = int(self._edges[start]), int(self._edges[stop])
            data = {k: self._held[k][a:b] for k in ("rows", "scale", "segment") if k in self._held}
        else:
            data = self._read_range(start, stop)
        if "scale" not in data:
            return np.asarray(data["rows"], dtype=np.float32)
        shift, gain = self.channel_tables()  # (S, L, D)
        seg = data["segment"]
        return decode(data["rows"], self.split.store.encoding, data["scale"], shift[seg], gain[seg])

    # -- assembling ------------------------------------------------------------------------------------------
    def batch(self, data: dict[str, Any], idx: np.ndarray, dtype: Any = np.float32, ids: bool = True
              ) -> dict[str, Any]:
        """Storage indices `idx` of a read window -> a batch: `features` (in `dtype`, or the codes), `mask` and
        `lengths` (tokens), `scale` and `segment` (codes), `index`, `ids` (unless `ids=False`) and `targets`
        ({column: (B,)})."""
        local = data["pos"][np.searchsorted(data["ids"], idx)]
        rows, first = data["rows"], data["start"][local]
        out: dict[str, Any] = {"index": idx.astype(np.int64)}
        if ids:
            names = self.example_ids
            out["ids"] = [names[i] for i in idx]
        if self.spec.features == "pooled":
            out["features"] = rows[first].astype(dtype)  # (B, L, D)
        else:
            lens = self.lengths[idx]
            B, T = len(idx), int(lens.max())
            L, D = rows.shape[1], rows.shape[2]
            x = np.zeros((B, T, L, D), dtype=rows.dtype if self.spec.codes else dtype)
            mask = np.zeros((B, T), dtype=bool)
            scale = np.zeros((B, T, L), np.float32) if self.spec.codes else None
            for b, (f, n) in enumerate(zip(first, lens)):
                x[b, :n], mask[b, :n] = rows[f:f + n], True  # float16 -> float32 here, one batch at a time
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
