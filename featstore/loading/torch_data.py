"""PyTorch datasets over a store split: `split.torch_dataset(...)` (map-style, one example per item) and
`split.torch_iterable(...)` (padded batches, shared out over DataLoader workers and ranks so every example is
seen exactly once per epoch). Imported only when one of them is asked for.

A dataset carries only how to reopen its store (path, storage options, cache); each DataLoader worker opens
its own copy, so stores work under spawned workers and remote stores read through the local cache.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..errors import InputError
from ..store.encoding import FP8_VALUES, decode_tensors
from .batches import BUFFER_CHUNKS, CHUNK_TOKENS, BatchReader, BatchSpec, Split


def _targets(targets: str | Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    if targets is None:
        return (), False
    if isinstance(targets, str):
        return (targets,), True
    return tuple(targets), False


class _SplitHandle:
    """Reopens a split in whichever process uses it; pickles as its opening arguments only."""

    def __init__(self, split: Split):
        self.reopen, self.name = split.store.reopener(), split.name
        self._split: Split | None = split

    @property
    def split(self) -> Split:
        if self._split is None:
            self._split = self.reopen().split(self.name)
        return self._split

    def __getstate__(self) -> dict[str, Any]:
        return {"reopen": self.reopen, "name": self.name, "_split": None}


def _tensors(batch: dict[str, Any], single_target: bool) -> dict[str, Any]:
    out = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
           for k, v in batch.items() if k != "targets"}
    targets = {c: torch.from_numpy(np.ascontiguousarray(y)) for c, y in batch["targets"].items()}
    if targets:
        out["targets"] = next(iter(targets.values())) if single_target else targets
    return out


class StoreDataset(Dataset):
    """Map-style: item i = example i in storage order (`split.input_order()` maps input rows to it):
    `features` (T, L, D) float32 token features or (L, D) pooled, `length`, `targets`, `id`, `index`."""

    def __init__(self, split: Split, layers: Sequence[int] | None = None, features: str = "tokens",
                 pooling: str = "mean", targets: str | Sequence[str] | None = None, unproject: bool = False):
        names, self.single_target = _targets(targets)
        self.spec = BatchSpec(None if layers is None else tuple(layers), features, pooling, names,
                              unproject=unproject).checked(split)
        self.handle, self.n = _SplitHandle(split), len(split)
        self._reader: BatchReader | None = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -self.n <= i < self.n:
            raise IndexError(f"example {i} out of range: the split has {self.n}")
        i = i % self.n
        if self._reader is None or self._reader.split is not self.handle.split:
            self._reader = BatchReader(self.handle.split, self.spec)
        r = self._reader
        data = r.read([(i, i + 1)])
        b = _tensors(r.batch(data, np.array([i])), self.single_target)
        item = {"features": b["features"][0], "length": int(r.lengths[i]), "id": b["ids"][0], "index": i}
        if "targets" in b:
            item["targets"] = b["targets"][0] if self.single_target else {c: y[0] for c, y in b["targets"].items()}
        return item

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}


def pad_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader `collate_fn` for `StoreDataset` items: token features padded to (B, T, L, D) + mask (B, T)."""
    first = items[0]
    out: dict[str, Any] = {"ids": [it["id"] for it in items], "index": torch.tensor([it["index"] for it in items])}
    if first["features"].dim() == 3:  # tokens (T, L, D)
        lengths = torch.tensor([it["length"] for it in items])
        x = first["features"].new_zeros((len(items), int(lengths.max()), *first["features"].shape[1:]))
        for b, it in enumerate(items):
            x[b, :it["length"]] = it["features"]
        out.update(features=x, lengths=lengths, mask=torch.arange(x.shape[1])[None] < lengths[:, None])
    else:
        out["features"] = torch.stack([it["features"] for it in items])
    if "targets" in first:
        t = first["targets"]
        out["targets"] = torch.stack([it["targets"] for it in items]) if torch.is_tensor(t) else \
            {c: torch.stack([it["targets"][c] for it in items]) for c in t}
    return out


def _rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's rank and the world size: as given, else torch.distributed's when initialised, else (0, 1)."""
    if rank is None and world_size is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if (rank is None) != (world_size is None):
        raise InputError("give both rank and world_size, or neither (then torch.distributed decides)")
    rank, world_size = (0, 1) if rank is None else (int(rank), int(world_size))
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank {rank} of world_size {world_size}: need 0 <= rank < world_size")
    return rank, world_size


class StoreIterable(IterableDataset):
    """Padded batches (use `DataLoader(ds, batch_size=None, num_workers=...)`): `features` (B, T, L, D) float32 +
    `mask` (B, T) + `lengths`, or (B, L, D) pooled; `targets`, `index` (storage order), `ids`. With `codes=True`
    an 8-bit store's `features` are its codes with `scale` (B, T, L) and `segment` (B,): decode them on the device
    with `decode_codes(batch, *ds.channel_tables(device))`. Call `set_epoch(e)` before each epoch for a new
    shuffle; the same seed and epoch give the same batches."""

    def __init__(self, split: Split, layers: Sequence[int] | None = None, features: str = "tokens",
                 pooling: str = "mean", targets: str | Sequence[str] | None = None, batch_tokens: int | None = None,
                 batch_size: int | None = None, shuffle: bool = True, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, codes: bool = False, unproject: bool = False,
                 buffer_chunks: int = BUFFER_CHUNKS, chunk_tokens: int = CHUNK_TOKENS):
        names, self.single_target = _targets(targets)
        self.spec = BatchSpec(None if layers is None else tuple(layers), features, pooling, names, batch_tokens,
                              batch_size, codes, unproject).checked(split)
        if buffer_chunks < 1 or chunk_tokens < 1:
            raise InputError("buffer_chunks and chunk_tokens must be positive")
        self.handle = _SplitHandle(split)
        self.shuffle, self.seed, self.epoch = shuffle, int(seed), 0
        self.rank, self.world_size = _rank(rank, world_size)  # checked now, resolved again in each worker
        self._given = (rank, world_size)
        self.buffer_chunks, self.chunk_tokens = buffer_chunks, chunk_tokens

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shard(self) -> tuple[int, int]:
        """(this reader's shard, number of shards): ranks x DataLoader workers. In the main process the rank is
        looked up again (torch.distributed may have started since); a worker keeps what its parent resolved."""
        info = get_worker_info()
        if info is None:
            self.rank, self.world_size = _rank(*self._given)
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * workers + worker, self.world_size * workers

    def __iter__(self):
        shard, n_shards = self.shard()
        reader = BatchReader(self.handle.split, self.spec, self.chunk_tokens)
        for batch in reader.epoch(shuffle=self.shuffle, seed=self.seed, epoch=self.epoch, shard=shard,
                                  n_shards=n_shards, buffer_chunks=self.buffer_chunks):
            yield _tensors(batch, self.single_target)

    def channel_tables(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(S, L, D) shift and gain of an 8-bit store's token codes, for `decode_codes`."""
        shift, gain = BatchReader(self.handle.split, self.spec, self.chunk_tokens).channel_tables()
        return torch.from_numpy(shift).to(device), torch.from_numpy(gain).to(device)


def decode_codes(batch: dict[str, Any], shift: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """A `codes=True` batch's (B, T, L, D) codes -> float32 on their device: codes * scale * gain[seg] + shift[seg];
    padding decodes to 0."""
    codes = batch["features"]
    dev = codes.device
    if codes.dtype == torch.uint8:  # fp8 e4m3fn bytes: a 256-entry table, exact
        q = torch.from_numpy(FP8_VALUES).to(dev)[codes.long()]
    else:
        q = codes.float()
    return decode_tensors(q, batch["scale"].to(dev), batch["segment"].to(dev), batch["mask"].to(dev), shift, gain)
