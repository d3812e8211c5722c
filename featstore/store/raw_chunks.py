"""Reading uncompressed Zarr v3 arrays of a local store straight from their chunk files.

What featstore writes by default (the `bytes` codec, little-endian, a regular grid of whole rows, `/`-separated
chunk keys) is read here with `os.preadv` into the output buffer: no per-chunk codec pipeline, no copy, on the
caller's thread (file reads release the GIL; readers run their own reads side by side: heads reads the layers of
a block in parallel and the next window ahead). A pool of threads per read was measured no faster than this
(benchmarks/bench_read.py, RESULTS.md). Any other layout (a codec, another key encoding) is left to
zarr-python: `RawChunks.open` returns None for it.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from ..errors import StoreError
from ..io.files import load_json


def _plain_layout(meta: dict[str, Any]) -> bool:
    """Whether `zarr.json` describes raw little-endian chunks of whole rows that this module can read."""
    codecs = meta.get("codecs")
    grid = meta.get("chunk_grid", {})
    keys = meta.get("chunk_key_encoding", {})
    shape, chunks = meta.get("shape"), grid.get("configuration", {}).get("chunk_shape")
    return (meta.get("node_type") == "array" and isinstance(codecs, list) and len(codecs) == 1
            and codecs[0].get("name") == "bytes"
            and codecs[0].get("configuration", {}).get("endian", "little") == "little"
            and sys.byteorder == "little" and not meta.get("storage_transformers")
            and grid.get("name") == "regular" and keys.get("name") == "default"
            and keys.get("configuration", {}).get("separator", "/") == "/"
            and isinstance(shape, list) and isinstance(chunks, list) and len(shape) == len(chunks) >= 1
            and list(chunks[1:]) == list(shape[1:]) and isinstance(chunks[0], int) and chunks[0] >= 1)


class RawChunks:
    """A read-only array over the chunk files of one uncompressed Zarr v3 array (shape-checked by callers)."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int):
        self.path, self.shape, self.dtype, self.chunk_rows = path, shape, dtype, chunk_rows
        self.ndim = len(shape)
        self.row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    @classmethod
    def open(cls, path: str) -> "RawChunks | None":
        meta_path = os.path.join(path, "zarr.json")
        if not os.path.isfile(meta_path):
            return None
        meta = load_json(meta_path, "array metadata")
        if not isinstance(meta, dict) or not _plain_layout(meta):
            return None
        try:
            dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        except (TypeError, ValueError):
            return None
        if dtype.kind not in "biuf":  # plain numbers only: never objects or strings from untrusted metadata
            return None
        return cls(path, tuple(int(n) for n in meta["shape"]), dtype,
                   int(meta["chunk_grid"]["configuration"]["chunk_shape"][0]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple) and len(key) == 1:
            key = key[0]
        if key is Ellipsis or (isinstance(key, tuple) and not key):
            key = slice(None)
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            return self._rows(start, max(start, stop))
        return self._rows(0, self.shape[0])[key]  # anything else: numpy indexing of the whole array

    def _rows(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start,) + self.shape[1:], dtype=self.dtype)
        if stop <= start or self.row_bytes == 0:
            return out
        buf = out.reshape(-1).view(np.uint8)
        R = self.chunk_rows
        for c in range(start // R, (stop - 1) // R + 1):
            a, b = max(start, c * R), min(stop, (c + 1) * R)
            self._read_chunk(c, (a - c * R) * self.row_bytes,
                             buf[(a - start) * self.row_bytes:(b - start) * self.row_bytes])
        return out

    def _read_chunk(self, c: int, offset: int, into: np.ndarray) -> None:
        path = os.path.join(self.path, "c", str(c), *["0"] * (self.ndim - 1))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError(f"{self.path}: chunk {c} is missing; the store is damaged, run `featstore verify` on it")
        try:
            view, done = memoryview(into), 0
            while done < len(view):
                n = os.preadv(fd, [view[done:]], offset + done)
                if n <= 0:
                    raise StoreError(f"{path} is shorter than its array says; the store is damaged, run "
                                     "`featstore verify` on it")
                done += n
        finally:
            os.close(fd)
