"""Background segment writer: the forward pass hands over whole segments and never waits on disk.

One thread behind a bounded queue (`io.background.BackgroundWorker`). Each segment is assembled from its
batches, written by the storage backend under a temporary name, checksummed, and committed with its record:
a segment either exists whole or not at all. Use it as a context manager:

    with SegmentWriter(backend, compression, chunk_bytes) as writer:
        writer.put(job)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io.background import BackgroundWorker
from ..testhooks import pause_point
from ..store import StorageBackend
from ..store.encoding import storable
from .device_side import host_array


TOKEN_ARRAYS = ("word_index", "char_start", "char_end")  # token/span tasks: (n_tokens,) int32, -1 = none


@dataclass
class SegmentJob:
    split: str
    name: str
    index: int
    layers: list[int]
    dtype: str  # of the batches' arrays (float32 when they are to be coded)
    batches: list[dict] = field(default_factory=list)
    stats: dict[int, list[float]] = field(default_factory=dict)  # layer -> [sum, sum of squares, count]
    encoding: str | None = None  # default: the dtype; `int8`/`fp8` code the rows here, on the writer thread
    encoded: dict[str, Any] | None = None  # feature arrays already coded on the device (`device_side`)


def assemble(job: SegmentJob) -> dict[str, np.ndarray]:
    """Batches of one segment -> the segment's named arrays (storage order)."""
    b = job.batches
    lengths = np.concatenate([x["lengths"] for x in b]).astype(np.int32)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = [i.encode() for x in b for i in x["ids"]]
    id_offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(i) for i in ids], out=id_offsets[1:])
    arrays = {
        "offsets": offsets,
        "length": lengths,
        "row": np.concatenate([x["rows"] for x in b]).astype(np.int64),
        "id_bytes": np.frombuffer(b"".join(ids), dtype=np.uint8).copy(),
        "id_offsets": id_offsets,
        "input_ids": np.concatenate([x["input_ids"] for x in b]).astype(np.int32),
    }
    for name in TOKEN_ARRAYS:
        if name in b[0]:
            arrays[name] = np.concatenate([x[name] for x in b]).astype(np.int32)
    if job.encoded is not None:  # coded on the device: wait for the copies
        arrays.update({name: host_array(a) for name, a in job.encoded.items()})
        return arrays
    for k in job.layers:
        for kind in ("tokens", "cls", "mean"):
            rows = np.concatenate([host_array(x[f"L{k}/{kind}"]) for x in b])  # (R, D)
            for suffix, a in storable(rows, job.encoding or job.dtype).items():
                arrays[f"L{k}/{kind}{suffix}"] = a
    return arrays


class SegmentWriter:
    """Writes SegmentJobs on a background thread; an error surfaces on the next `put` or when the `with`
    block ends. Leaving the block by an exception drops pending segments (committed ones stay: resume)."""

    def __init__(self, backend: StorageBackend, compression: str, chunk_bytes: int, max_pending: int = 2,
                 rank: int = 0):
        self.backend = backend
        self.rank = rank  # recorded in each segment record (not in the manifest): who wrote it, for diagnosis
        self.compression = compression
        self.chunk_bytes = chunk_bytes
        self.max_pending = max_pending
        self.records: list[dict[str, Any]] = []
        self.bytes_written = 0
        self.busy_seconds = 0.0
        self._worker: BackgroundWorker[SegmentJob] | None = None

    def __enter__(self) -> "SegmentWriter":
        self._worker = BackgroundWorker(self._write, depth=self.max_pending, name="featstore-writer")
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._worker is not None
        worker, self._worker = self._worker, None
        worker.__exit__(*exc)

    def put(self, job: SegmentJob) -> None:
        if self._worker is None:
            raise RuntimeError("SegmentWriter.put outside its `with` block")
        self._worker.put(job)

    def check(self) -> None:
        """Re-raise a write error now (e.g. while waiting for `records` to grow)."""
        if self._worker is not None:
            self._worker.check()

    def committed(self) -> int:
        """Segments committed so far (a write error is raised here)."""
        self.check()
        return len(self.records)

    def _write(self, job: SegmentJob) -> None:
        t0 = time.perf_counter()
        arrays = assemble(job)
        pending = self.backend.write_segment(job.split, job.name, arrays, self.compression, self.chunk_bytes)
        record = self.backend.commit_segment(pending, {
            "split": job.split, "name": job.name, "index": job.index, "n_examples": int(len(arrays["length"])),
            "n_tokens": int(arrays["offsets"][-1]), "rank": self.rank,
            "stats": {str(k): v for k, v in job.stats.items()}})
        pause_point("segment-committed")  # crash tests kill the process here (no-op unless asked)
        self.records.append(record)
        self.bytes_written += sum(f["size"] for f in record["files"].values())
        self.busy_seconds += time.perf_counter() - t0
