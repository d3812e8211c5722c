"""Background segment writer: the forward pass hands over whole segments and never waits on disk.

One thread, one bounded queue. Each segment is assembled from its batches, written under a temporary
name, checksummed, and renamed into place with its record: a segment either exists whole or not at all.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .layout import Layout, to_storable
from .testhooks import pause_point


@dataclass
class SegmentJob:
    split: str
    name: str
    index: int
    layers: list[int]
    dtype: str
    batches: list[dict] = field(default_factory=list)
    stats: dict[int, list[float]] = field(default_factory=dict)  # layer -> [sum, sum of squares, count]


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
    for k in job.layers:
        for kind in ("tokens", "cls", "mean"):
            arrays[f"L{k}/{kind}"] = to_storable(np.concatenate([x[f"L{k}/{kind}"] for x in b]), job.dtype)
    return arrays


class BackgroundWriter:
    """Writes SegmentJobs on a thread; errors surface on the next `put` or on `close`."""

    def __init__(self, layout: Layout, compression: str, chunk_bytes: int, max_pending: int = 2):
        self.layout = layout
        self.compression = compression
        self.chunk_bytes = chunk_bytes
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None
        self.records: list[dict] = []
        self.bytes_written = 0
        self.busy_seconds = 0.0
        self.thread = threading.Thread(target=self._run, name="featstore-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            if self.error is not None:
                continue
            try:
                t0 = time.perf_counter()
                arrays = assemble(job)
                rel = f"segments/{job.split}/{job.name}"
                record, tmp, final = self.layout.write_segment(rel, arrays, self.compression, self.chunk_bytes)
                record.update(split=job.split, name=job.name, index=job.index,
                              n_examples=int(len(arrays["length"])), n_tokens=int(arrays["offsets"][-1]),
                              stats={str(k): v for k, v in job.stats.items()})
                self.layout.commit_segment(tmp, final, record)
                pause_point("segment-committed")  # crash tests kill the process here
                self.records.append(record)
                self.bytes_written += sum(f["size"] for f in record["files"].values())
                self.busy_seconds += time.perf_counter() - t0
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self.error = e

    def put(self, job: SegmentJob) -> None:
        self._raise()
        self.queue.put(job)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error
