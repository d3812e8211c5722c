"""Batches for heads from a store: padded token features (B, T, L, D) + mask, or pooled vectors (B, L, D).

Storage order is length-sorted (longest first), so batches are cut from contiguous storage ranges and carry
almost no padding. Each epoch is shuffled by a seeded, chunk-aware plan: the split is cut into *blocks* of
neighbouring examples; block order is shuffled, examples are shuffled locally inside a block (each moves by
about two batches, so batch composition changes every epoch while lengths stay alike), and the batches of a
window of blocks are interleaved. A block is the unit of reading, so a split streamed from the store is read
by contiguous token ranges. The plan depends only on the split, batch size and seed - never on whether the
split is held in RAM - so in-RAM and streamed training see the very same batches.

A background thread assembles batches into a bounded queue while a second one reads the next window of
blocks, so reading, batching and training overlap and the device never waits on the store. Stored
float16 is converted per batch, never for a whole split. 8-bit codes are held in RAM as codes (a quarter of
float32) and decoded per batch: on this thread for a CPU, or moved as codes and decoded on a GPU
(`codes_out`, `heads.runtime.to_device`). No torch here: batches are numpy arrays.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from featstore.errors import StoreError
from featstore.io.background import read_ahead
from featstore.store import Split, Store
from featstore.store.encoding import decode, is_coded, read_itemsize

BLOCK_BYTES = 32 << 20  # target bytes of token features read at once when streaming
MIN_BLOCK_BATCHES = 8  # a block holds at least this many batches, so batches change members every epoch
MAX_BLOCK_BATCHES = 16  # a block holds at most this many batches (bounds padding after in-block shuffle)
WINDOW_BLOCKS = 4  # batches of up to this many blocks are interleaved ...
WINDOW_BYTES = 512 << 20  # ... while they hold at most this many bytes of features (at least one block);
# two windows are in memory at once when streaming: the one being batched and the one being read
JITTER_BATCHES = 2  # how far an example may move inside its block


@dataclass
class Codec:
    """How 8-bit token codes decode, per layer l: row = codes * scale[row, l] * gain[seg, l] + shift[seg, l],
    `seg` the segment the row's example was written in (an example never spans segments)."""
    encoding: str  # int8 | fp8
    shift: np.ndarray  # (S, L, D) float32, one row per segment of the split
    gain: np.ndarray  # (S, L, D) float32
    on_device: dict[str, Any] = field(default_factory=dict, repr=False)  # the tables moved to a device, by device

    def decode(self, codes: np.ndarray, scale: np.ndarray, seg: int) -> np.ndarray:
        """(n, L, D) codes of one example + (n, L) row scales -> float32 rows, on the host."""
        return decode(codes, self.encoding, scale, self.shift[seg], self.gain[seg])


@dataclass
class Coded:
    """Token rows of an 8-bit store as stored: a quarter of float32's bytes in RAM and on the way to the device."""
    codes: np.ndarray  # (n, L, D) int8 | uint8
    scale: np.ndarray  # (n, L) float32
    seg: np.ndarray  # (n,) int32

    def __getitem__(self, sl: slice) -> "Coded":
        return Coded(self.codes[sl], self.scale[sl], self.seg[sl])


@dataclass
class Batch:
    x: np.ndarray  # (B, T, L, D) token features (8-bit codes when `codec` is set), or (B, L, D) pooled
    mask: np.ndarray | None  # (B, T) bool, True on real tokens; None for pooled
    y: np.ndarray | None  # (B,) targets
    index: np.ndarray  # (B,) storage indices
    scale: np.ndarray | None = None  # (B, T, L) row scales of coded `x`
    seg: np.ndarray | None = None  # (B,) segment of each example of coded `x`
    codec: Codec | None = None
    segments: np.ndarray | None = None  # (B, T) int64 segment id per token (span tasks: 0 question, 1 context)


class TokenSource:
    """Token features of chosen layers of one split, read by contiguous example ranges."""

    codec: Codec | None = None  # set when `read` returns `Coded` rows
    segments: np.ndarray | None = None  # (n_tokens,) segment id per token, batched beside the features when set

    def __init__(self, lengths: np.ndarray, n_layers: int, hidden: int, token_bytes: int):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        self.n_layers, self.hidden, self.token_bytes = n_layers, hidden, token_bytes

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1]) * self.token_bytes

    def read(self, start: int, stop: int) -> np.ndarray | Coded:
        """Tokens of examples [start, stop): (n_tokens, L, D) in the stored dtype (bf16 already widened), or
        their 8-bit codes."""
        raise NotImplementedError

    def read_float(self, start: int, stop: int) -> np.ndarray:
        """Tokens of examples [start, stop) as float32 (n_tokens, L, D), codes decoded here on the host."""
        block = self.read(start, stop)
        if not isinstance(block, Coded):
            return np.asarray(block, dtype=np.float32)
        base = self.offsets[start]
        parts = [self.codec.decode(block.codes[a:b], block.scale[a:b], int(block.seg[a])) for a, b in
                 zip(self.offsets[start:stop] - base, self.offsets[start + 1:stop + 1] - base) if b > a]
        return np.concatenate(parts) if parts else np.zeros((0, self.n_layers, self.hidden), np.float32)

    def input_stats(self, max_tokens: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of token inputs (L*D,) over up to `max_tokens` tokens (a per-token probe's
        standardisation)."""
        n = len(self)
        stop = int(np.searchsorted(self.offsets, min(max_tokens, int(self.offsets[-1])), side="left"))
        x = self.read_float(0, max(1, min(stop, n))).reshape(-1, self.n_layers * self.hidden).astype(np.float64)
        return x.mean(0), x.std(0)

    def batch(self, block: np.ndarray | Coded, block_start: int, idx: np.ndarray, dtype: Any,
              codes_out: bool = False) -> Batch:
        """Pad the examples `idx` (storage indices inside the block) to (B, T, L, D) + mask (B, T). Coded rows
        are decoded here (on the loader's thread), or with `codes_out` padded as codes for the device to decode."""
        lens = self.lengths[idx]
        B, T = len(idx), int(lens.max())
        coded = isinstance(block, Coded)
        keep = coded and codes_out
        x = np.zeros((B, T, self.n_layers, self.hidden), dtype=block.codes.dtype if keep else dtype)
        mask = np.zeros((B, T), dtype=bool)
        scale = np.zeros((B, T, self.n_layers), dtype=np.float32) if keep else None
        seg = np.zeros(B, dtype=np.int64) if keep else None
        base = self.offsets[block_start]
        for b, (i, n) in enumerate(zip(idx, lens)):
            a = int(self.offsets[i] - base)
            mask[b, :n] = True
            if keep:
                x[b, :n], scale[b, :n], seg[b] = block.codes[a:a + n], block.scale[a:a + n], block.seg[a]
            elif coded:
                x[b, :n] = self.codec.decode(block.codes[a:a + n], block.scale[a:a + n], int(block.seg[a]))
            else:
                x[b, :n] = block[a:a + n]  # float16 -> float32 here, one batch at a time
        segments = None
        if self.segments is not None:
            segments = np.zeros((B, T), dtype=np.int64)
            for b, (i, n) in enumerate(zip(idx, lens)):
                segments[b, :n] = self.segments[self.offsets[i]:self.offsets[i] + n]
        return Batch(x, mask, None, idx, scale, seg, self.codec if keep else None, segments)


class StoreTokens(TokenSource):
    """A store split's token features; held in RAM when `in_ram`, else read per block from the store."""

    def __init__(self, split: Split, layers: Sequence[int], in_ram: bool):
        store = split.store
        super().__init__(split.lengths, len(layers), store.width, held_token_bytes(store, len(layers)))
        self.split, self.layers, self.in_ram = split, list(layers), in_ram
        if is_coded(store.encoding):
            tables = [split.channel_tables(k) for k in self.layers]  # [(shift (S, D), gain (S, D))] per layer
            self.codec = Codec(store.encoding, np.stack([t[0] for t in tables], axis=1),
                               np.stack([t[1] for t in tables], axis=1))
        self._ram: np.ndarray | Coded | None = None
        if in_ram:
            self._ram = self._read_store(0, len(self))  # (N_tokens, L, D)

    def _read_store(self, start: int, stop: int) -> np.ndarray | Coded:
        from concurrent.futures import ThreadPoolExecutor

        a, b = int(self.offsets[start]), int(self.offsets[stop])
        read = (lambda k: self.split.token_codes(k, a, b)) if self.codec else (lambda k: self.split.tokens(k, a, b))
        # (n, D) per layer: one contiguous token range each, the layers read side by side
        with ThreadPoolExecutor(min(len(self.layers), 4)) as pool:
            parts = list(pool.map(read, self.layers))
        if self.codec:
            return Coded(np.stack([p[0] for p in parts], axis=1), np.stack([p[1] for p in parts], axis=1), parts[0][2])
        out = np.empty((b - a, len(self.layers), self.hidden), dtype=parts[0].dtype)  # (n, L, D)
        for j, part in enumerate(parts):
            out[:, j] = part
        return out

    def read(self, start: int, stop: int) -> np.ndarray | Coded:
        if self._ram is not None:
            return self._ram[self.offsets[start]:self.offsets[stop]]
        return self._read_store(start, stop)


class ArrayTokens(TokenSource):
    """Token features already in memory (raw text run through the backbone by `heads predict`)."""

    def __init__(self, flat: np.ndarray, lengths: np.ndarray):
        super().__init__(lengths, flat.shape[1], flat.shape[2], flat.shape[1] * flat.shape[2] * flat.dtype.itemsize)
        self.flat = flat  # (N_tokens, L, D)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.flat[self.offsets[start]:self.offsets[stop]]


class PooledSource:
    """Pooled vectors (N, L, D) of chosen layers, in the stored dtype; small enough to hold in RAM."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self.lengths = np.ones(len(x), dtype=np.int64)
        self.nbytes = int(x.nbytes)

    @classmethod
    def from_split(cls, split: Split, layers: Sequence[int], pooling: str) -> "PooledSource":
        return cls(np.stack([split.pooled(pooling, k) for k in layers], axis=1))

    def __len__(self) -> int:
        return len(self.x)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.x[start:stop]

    def batch(self, block: np.ndarray, block_start: int, idx: np.ndarray, dtype: Any,
              codes_out: bool = False) -> Batch:
        return Batch(block[idx - block_start].astype(dtype), None, None, idx)  # (B, L, D)

    def input_stats(self, rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the pooled inputs (N, L*D), accumulated in float64 a slice at a time (no full copy)."""
        x = self.x.reshape(len(self.x), -1)
        s, ss = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        for a in range(0, len(x), rows):
            part = x[a:a + rows].astype(np.float64)
            s += part.sum(0)
            ss += np.square(part).sum(0)
        mean = s / len(x)
        return mean, np.sqrt(np.maximum(ss / len(x) - mean ** 2, 0.0))


Source = TokenSource | PooledSource


def block_size(source: Source, batch_size: int) -> int:
    """Examples per block: about BLOCK_BYTES of features, a whole number of batches, 8..16 batches.

    With one batch per block (long inputs, wide models) a batch would keep the same members every epoch,
    which visibly hurt Y-Tuning on small data.
    """
    n_batches = int(BLOCK_BYTES // max(_example_bytes(source) * batch_size, 1))
    return batch_size * min(max(n_batches, MIN_BLOCK_BATCHES), MAX_BLOCK_BATCHES)


def window_blocks(source: Source, block: int) -> int:
    """Blocks whose batches are interleaved: up to WINDOW_BLOCKS, within WINDOW_BYTES of features."""
    return max(1, min(WINDOW_BLOCKS, int(WINDOW_BYTES // max(_example_bytes(source) * block, 1))))


def _example_bytes(source: Source) -> float:
    return source.nbytes / max(len(source), 1)


def plan_epoch(n: int, batch_size: int, block: int, rng: np.random.Generator | None) -> list[tuple[int, int, list[np.ndarray]]]:
    """Blocks `(start, stop, batches)` for one pass. `rng=None`: storage order, contiguous batches (eval)."""
    starts = list(range(0, n, block))
    if rng is not None:
        starts = [starts[i] for i in rng.permutation(len(starts))]
    out = []
    for s in starts:
        e = min(s + block, n)
        idx = np.arange(s, e)
        if rng is not None:  # a local shuffle: each example moves by about JITTER_BATCHES batches at most,
            # so a batch still holds neighbours in storage order (similar lengths: little padding)
            idx = s + np.argsort(np.arange(e - s) + rng.uniform(0, JITTER_BATCHES * batch_size, e - s), kind="stable")
        out.append((s, e, [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]))
    return out


class Loader:
    """Iterate batches of one split, assembled on a background thread behind a bounded queue."""

    def __init__(self, source: Source, targets: np.ndarray | None, batch_size: int, *, shuffle: bool,
                 seed: int = 0, dtype: Any = np.float32, prefetch: int = 4, codes_out: bool = False):
        self.source, self.targets, self.batch_size = source, targets, batch_size
        self.shuffle, self.seed, self.dtype, self.prefetch = shuffle, seed, dtype, prefetch
        self.codes_out = codes_out  # 8-bit stores: batches carry codes, decoded on the device (GPU)
        self.block = block_size(source, batch_size)
        self.window = window_blocks(source, self.block) if shuffle else 1

    def __len__(self) -> int:
        n = len(self.source)
        return sum(-(-min(self.block, n - s) // self.batch_size) for s in range(0, n, self.block))

    def plan(self, epoch: int) -> list[tuple[int, int, list[np.ndarray]]]:
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        return plan_epoch(len(self.source), self.batch_size, self.block, rng)

    def _batches(self, epoch: int) -> Iterator[Batch]:
        from concurrent.futures import ThreadPoolExecutor

        plan = self.plan(epoch)
        rng = np.random.default_rng([self.seed, epoch, 1]) if self.shuffle else None
        windows = [plan[w:w + self.window] for w in range(0, len(plan), self.window)]

        def read(window: list) -> list:
            return [(self.source.read(s, e), s, batches) for s, e, batches in window]

        # The next window is read while this one's batches are assembled: a streamed split's reads overlap
        # with batching and training instead of alternating with them.
        with ThreadPoolExecutor(1, thread_name_prefix="heads-read") as reader:
            ahead = reader.submit(read, windows[0]) if windows else None
            for w in range(len(windows)):
                blocks = ahead.result()
                ahead = reader.submit(read, windows[w + 1]) if w + 1 < len(windows) else None
                group = [(data, s, idx) for data, s, batches in blocks for idx in batches]
                order = rng.permutation(len(group)) if rng is not None else range(len(group))
                for j in order:
                    data, s, idx = group[j]
                    batch = self.source.batch(data, s, idx, self.dtype, self.codes_out)
                    batch.y = self.targets[idx] if self.targets is not None else None
                    yield batch

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """Batches of one pass; a worker thread keeps up to `prefetch` of them ready."""
        return read_ahead(self._batches(epoch), self.prefetch, name="heads-prefetch")


def available_memory() -> int:
    """Bytes of RAM available now (psutil when installed, else sysconf)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 1 << 30


def default_max_memory() -> int:
    """Half of the RAM available now: room for the process, the OS page cache and the rest of the machine."""
    return available_memory() // 2


def held_token_bytes(store: Store, n_layers: int) -> int:
    """Bytes one token's features of `n_layers` layers take in RAM as a source holds them: 8-bit codes stay
    codes (1 byte per value, a float32 scale per layer, a segment index), floats as read."""
    if is_coded(store.encoding):
        return n_layers * (store.width + 4) + 4
    return n_layers * store.width * read_itemsize(store.dtype)


def token_bytes(split: Split, n_layers: int) -> int:
    return split.n_tokens * held_token_bytes(split.store, n_layers)


def check_splits(store: Store, train: str | None, dev: str | None, test: str | None) -> None:
    """Every named split exists; the messages say how to proceed without a dev or test split."""
    have = store.splits
    p = []
    if train is not None and train not in have:
        p.append(f"store {store.path} has no split {train!r} to train on; its splits are {', '.join(have)} "
                 "(use --train-split)")
    if dev is not None and dev not in have:
        p.append(f"store {store.path} has no dev split {dev!r} for model selection (its splits: {', '.join(have)}); "
                 "pass --dev-split NAME, or --dev-split none to keep the last epoch without early stopping")
    if test is not None and test not in have:
        p.append(f"store {store.path} has no test split {test!r} (its splits: {', '.join(have)}); "
                 "pass --test-split NAME, or --test-split none")
    if p:
        raise StoreError("; ".join(p))


def make_sources(store: Store, names: Sequence[str], reads: str, layers: Sequence[int], pooling: str | None,
                 max_memory: int) -> tuple[dict[str, Source], dict[str, bool]]:
    """One source per split of `tokens` or `pooled` vectors; token splits are held in RAM in the given order
    while they fit under `max_memory`."""
    sources, in_ram, budget = {}, {}, max_memory
    for name in dict.fromkeys(names):
        split = store.split(name)
        if reads == "tokens":
            need = token_bytes(split, len(layers))
            in_ram[name] = need <= budget
            budget -= need if in_ram[name] else 0
            sources[name] = StoreTokens(split, layers, in_ram[name])
        else:
            in_ram[name] = True  # pooled vectors: one per example, always small
            sources[name] = PooledSource.from_split(split, layers, pooling)
    return sources, in_ram
