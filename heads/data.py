"""Batches for heads from a store: padded token features (B, T, L, D) + mask, or pooled vectors (B, L, D).

Planning, reading and padding are featstore's (`featstore.loading.batches`, the path `split.torch_iterable` takes):
chunks of neighbouring examples in shuffled order, batches of similar lengths that change members every epoch,
the next window read while this one is used. The plan depends only on the split, batch size and seed - never on
whether the split is held in RAM - so in-RAM and streamed training see the very same batches. What heads add:
a background thread that assembles batches into a bounded queue, batches in float16 for a GPU, 8-bit codes held
in RAM as codes (a quarter of float32) and decoded per batch (on this thread for a CPU, or moved as codes and
decoded on a GPU: `codes_out`, `heads.runtime.to_device`), and per-token segment ids for span heads.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from featstore.errors import StoreError
from featstore.io.background import read_ahead
from featstore.loading.batches import BatchReader, BatchSpec, held_token_bytes
from featstore.store import Split, Store
from featstore.store.encoding import decode, is_coded

@dataclass
class Codec:
    """How 8-bit token codes decode, per layer l: row = codes * scale[row, l] * gain[seg, l] + shift[seg, l],
    `seg` the segment the row's example was written in (an example never spans segments)."""
    encoding: str  # int8 | fp8
    shift: np.ndarray  # (S, L, D) float32, one row per segment of the split
    gain: np.ndarray  # (S, L, D) float32
    on_device: dict[str, Any] = field(default_factory=dict, repr=False)  # the tables moved to a device, by device


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


class Features:
    """One split's features as a head reads them: a `featstore.loading` reader (held in RAM or streamed), the
    8-bit decode tables, and per-token segment ids when a span head with context layers reads them."""

    segments: np.ndarray | None = None  # (n_tokens,) segment id per token, batched beside the features when set

    def __init__(self, reader: BatchReader):
        self.reader = reader
        self.codec: Codec | None = None
        if reader.spec.codes:
            shift, gain = reader.channel_tables()  # (S, L, D) each
            self.codec = Codec(reader.split.store.encoding, shift, gain)

    @classmethod
    def from_split(cls, split: Split, reads: str, layers: Sequence[int], pooling: str | None = None,
                   in_ram: bool = True) -> "Features":
        """`tokens` (8-bit stores as codes) or `pooled` features of `layers`; held in RAM when `in_ram`."""
        codes = reads == "tokens" and is_coded(split.store.encoding)
        spec = BatchSpec(tuple(layers), reads, pooling or "mean", codes=codes)
        return cls(BatchReader(split, spec, chunk_tokens=None, in_ram=in_ram))  # chunks and windows sized by bytes

    @classmethod
    def from_arrays(cls, tokens: np.ndarray | None = None, lengths: np.ndarray | None = None,
                    pooled: np.ndarray | None = None) -> "Features":
        """Features already in memory (raw text run through the backbone by `heads predict`)."""
        return cls(BatchReader.over_arrays(tokens, lengths) if tokens is not None else BatchReader.over_arrays(pooled))

    @property
    def lengths(self) -> np.ndarray:
        return self.reader.lengths

    @property
    def in_ram(self) -> bool:
        return self.reader.in_ram

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def held_bytes(self) -> int:
        """Bytes of features held in RAM (0 when streamed): 8-bit stores as codes + row scales + segments."""
        held = self.reader.held
        return sum(int(held[k].nbytes) for k in ("rows", "scale", "segment") if k in held) if held else 0

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Float32 rows of examples [start, stop), 8-bit codes decoded (`BatchReader.rows`)."""
        return self.reader.rows(start, stop)

    def input_stats(self, max_tokens: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the inputs (L*D,): token rows of the first examples up to `max_tokens` tokens (a
        per-token probe's standardisation), or every pooled vector, accumulated a slice at a time in float64."""
        r = self.reader
        if r.spec.features == "tokens":  # whole examples, up to the one that reaches max_tokens
            stops = [max(1, min(int(np.searchsorted(r.offsets, min(max_tokens, int(r.offsets[-1])))), len(r)))]
        else:
            stops = list(range(min(65536, len(r)), len(r), 65536)) + [len(r)]
        s = ss = None
        n, a = 0, 0
        for b in stops:
            x = r.rows(a, b)
            x = x.reshape(len(x), -1).astype(np.float64)
            s = x.sum(0) if s is None else s + x.sum(0)
            ss = np.square(x).sum(0) if ss is None else ss + np.square(x).sum(0)
            n, a = n + len(x), b
        mean = s / n
        return mean, np.sqrt(np.maximum(ss / n - mean ** 2, 0.0))

    def batch(self, data: dict[str, Any], idx: np.ndarray, dtype: Any, codes_out: bool = False) -> Batch:
        """The planned examples `idx` of a read window as a heads batch: padded (B, T, L, D) + mask (B, T), or
        (B, L, D) pooled. Codes are decoded here (on the loader's thread), or with `codes_out` kept as codes for
        the device to decode."""
        b = self.reader.batch(data, idx, dtype, ids=False)
        x, mask = b["features"], b.get("mask")
        scale = seg = codec = None
        if self.codec is not None and codes_out:
            scale, seg, codec = b["scale"], b["segment"], self.codec
        elif self.codec is not None:
            s = b["segment"]
            x = decode(x, self.codec.encoding, b["scale"], self.codec.shift[s][:, None], self.codec.gain[s][:, None])
            x[~mask] = 0.0  # padding stays 0, as float batches are padded
            x = x.astype(dtype, copy=False)
        segments = None
        if self.segments is not None:
            lens, offsets = b["lengths"], self.reader.offsets
            segments = np.zeros(mask.shape, dtype=np.int64)
            for j, (i, n) in enumerate(zip(idx, lens)):
                segments[j, :n] = self.segments[offsets[i]:offsets[i] + n]
        return Batch(x, mask, None, idx, scale, seg, codec, segments)


class Loader:
    """Iterate batches of one split, assembled on a background thread behind a bounded queue."""

    def __init__(self, source: Features, targets: np.ndarray | None, batch_size: int, *, shuffle: bool,
                 seed: int = 0, dtype: Any = np.float32, prefetch: int = 4, codes_out: bool = False):
        self.source, self.targets, self.batch_size = source, targets, batch_size
        self.shuffle, self.seed, self.dtype, self.prefetch = shuffle, seed, dtype, prefetch
        self.codes_out = codes_out  # 8-bit stores: batches carry codes, decoded on the device (GPU)

    def __len__(self) -> int:
        """Batches of epoch 1 (the first trained; with several windows another epoch may differ by one a window)."""
        return sum(len(batches) for _, batches in self.plan(1))

    def plan(self, epoch: int) -> list[tuple[list[tuple[int, int]], list[np.ndarray]]]:
        return self.source.reader.plan(shuffle=self.shuffle, seed=self.seed, epoch=epoch, batch_size=self.batch_size)

    def _batches(self, epoch: int) -> Iterator[Batch]:
        with contextlib.closing(self.source.reader.windows(self.plan(epoch))) as windows:  # its reader thread ends here
            for data, batches in windows:
                for idx in batches:
                    batch = self.source.batch(data, idx, self.dtype, self.codes_out)
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


def token_bytes(split: Split, n_layers: int) -> int:
    """Bytes a split's token features of `n_layers` layers take held in RAM (8-bit stores as codes)."""
    return split.n_tokens * held_token_bytes(split.store, n_layers, is_coded(split.store.encoding))


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
                 max_memory: int) -> tuple[dict[str, Features], dict[str, bool]]:
    """One source per split of `tokens` or `pooled` vectors; token splits are held in RAM in the given order
    while they fit under `max_memory`."""
    sources, in_ram, budget = {}, {}, max_memory
    for name in dict.fromkeys(names):
        split = store.split(name)
        if reads == "tokens":
            need = token_bytes(split, len(layers))
            in_ram[name] = need <= budget
            budget -= need if in_ram[name] else 0
        else:
            in_ram[name] = True  # pooled vectors: one per example, always small
        sources[name] = Features.from_split(split, reads, layers, pooling, in_ram[name])
    return sources, in_ram
