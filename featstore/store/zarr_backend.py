"""Zarr v3: a directory; each array a directory of chunk files; each segment its own group, written whole
under a temporary name and renamed into place. Group metadata at every level and `dimension_names` on every
array, so generic Zarr tools (`zarr.open_group(path).tree()`) browse a store. Checksums are per file."""
from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import numpy as np

from ..errors import InputError, StoreError
from ..io.files import check_can_create, load_json, write_json_atomic
from ..io.hashing import IOOptions, digest_file, new_hasher, record
from .base import SEGMENT_RECORD, ArrayLike, PendingSegment, Publication, StorageBackend, chunk_rows, \
    dimension_names, root_attributes
from .formats import register_format
from .local import committed_records, partial_name, remove_partials
from .manifest import MANIFEST, transfer_files, validate_published
from .raw_chunks import RawChunks
from ..testhooks import pause_point

CODECS = ("none", "zstd", "blosc-zstd", "blosc-lz4")


def _codecs(compression: str) -> list | None:
    from zarr.codecs import BloscCodec, ZstdCodec

    if compression == "none":
        return None
    if compression == "zstd":
        return [ZstdCodec(level=1)]
    if compression == "blosc-zstd":
        return [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")]
    if compression == "blosc-lz4":
        return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]
    raise StoreError(f"unknown compression {compression!r} for zarr: use one of {', '.join(CODECS)}")


def _little_endian(data: np.ndarray) -> bool:
    """Zarr's default `bytes` codec stores little-endian values: a native array on a little-endian host."""
    return data.dtype.byteorder == "<" or (data.dtype.byteorder in ("=", "|") and sys.byteorder == "little")


def _write_small_json(path: str, obj: Any) -> None:
    """Metadata inside a segment being written: the segment's rename into place is what makes it visible."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def _group_metadata(attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"attributes": attributes or {}, "zarr_format": 3, "node_type": "group"}


def _array_metadata(name: str, data: np.ndarray, chunks: tuple[int, ...]) -> dict[str, Any]:
    """The Zarr v3 `zarr.json` of an uncompressed array, as zarr-python writes it."""
    codec: dict[str, Any] = {"name": "bytes"}
    if data.dtype.itemsize > 1:
        codec["configuration"] = {"endian": "little"}
    meta = {"shape": list(data.shape), "data_type": data.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0.0 if data.dtype.kind == "f" else 0, "codecs": [codec], "attributes": {},
            "zarr_format": 3, "node_type": "array", "storage_transformers": []}
    dims = dimension_names(name, data.ndim)
    if dims is not None:
        meta["dimension_names"] = list(dims)
    return meta


def _ensure_groups(root: str, rel_dir: str) -> None:
    """Group metadata for `root` and every directory down to `rel_dir` under it (written once each)."""
    parts = [p for p in rel_dir.split("/") if p]
    for i in range(len(parts) + 1):
        meta = os.path.join(root, *parts[:i], "zarr.json")
        if not os.path.isfile(meta):
            os.makedirs(os.path.dirname(meta), exist_ok=True)
            tmp = f"{meta}.tmp-{os.getpid()}"
            _write_small_json(tmp, _group_metadata())
            os.replace(tmp, meta)  # never half a file, even for a writer killed here


def _write_raw_chunks(jobs: list[tuple[str, np.ndarray, int]], io: IOOptions) -> dict[str, tuple[int, str]]:
    """Write uncompressed Zarr v3 chunks straight from memory and hash the same bytes on the way.

    What zarr-python itself would write for the `bytes` codec (keys `c/<i>/0...`, edge chunks padded to the
    full chunk shape with the fill value 0), without its per-chunk pipeline and without reading the files
    back to checksum them. Chunks are written and hashed on `io.threads` threads (file writes, hashlib and
    blake3 release the GIL).
    """
    def one(args: tuple[str, np.ndarray, int, int]) -> tuple[str, tuple[int, str]]:
        adir, data, rows, i = args
        block = np.ascontiguousarray(data[i * rows:(i + 1) * rows])
        parts = [block.view(np.uint8).reshape(-1).data]
        if len(block) < rows:  # edge chunk: zarr stores the full chunk shape (fitted chunks keep this small)
            parts.append(memoryview(bytes((rows - len(block)) * (block.nbytes // max(len(block), 1)))))
        path = os.path.join(adir, "c", str(i), *["0"] * (data.ndim - 1))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        h = new_hasher(io.hash)
        with open(path, "wb") as f:
            for buf in parts:
                f.write(buf)
                h.update(buf)
        pause_point("chunk-written")  # crash tests kill the process here, other chunks still being written
        return path, (sum(len(b) for b in parts), h.hexdigest())

    tasks = [(adir, data, rows, i) for adir, data, rows in jobs for i in range(-(-len(data) // rows))]
    with ThreadPoolExecutor(max(1, io.threads)) as pool:
        return dict(pool.map(one, tasks))


def _write_group(path: str, arrays: dict[str, np.ndarray], compression: str, chunk_bytes: int, io: IOOptions,
                 name_prefix: str = "") -> dict[str, tuple[int, str]]:
    """Write `arrays` under the group at `path`; returns (size, digest) of the chunk files written raw.

    Uncompressed arrays (the default) are written without zarr-python: their `zarr.json` is the spec's
    plain JSON and their chunks are the raw bytes (`_write_raw_chunks`). Compressed ones go through zarr.
    `name_prefix` is where `path` lies in the store (for dimension names).
    """
    codecs = _codecs(compression)
    raw, group = [], None
    for name, data in arrays.items():
        chunks = chunk_rows(data.shape, data.dtype.itemsize, chunk_bytes)
        adir = os.path.join(path, name)
        if os.path.exists(adir):
            shutil.rmtree(adir)  # replaced whole
        if (codecs is None or data.ndim != 2) and _little_endian(data):
            _ensure_groups(path, os.path.dirname(name))
            os.makedirs(adir)
            _write_small_json(os.path.join(adir, "zarr.json"), _array_metadata(name_prefix + name, data, chunks))
            if data.size:
                raw.append((adir, data, chunks[0]))
            continue
        if group is None:
            import zarr

            group = zarr.open_group(path, mode="a", zarr_format=3)
        parent = group
        for p in name.split("/")[:-1]:
            parent = parent.require_group(p)
        arr = parent.create_array(os.path.basename(name), shape=data.shape, dtype=data.dtype, chunks=chunks,
                                  compressors=codecs if data.ndim == 2 else None, fill_value=0,
                                  dimension_names=dimension_names(name_prefix + name, data.ndim))
        if data.size:
            arr[...] = data
    return _write_raw_chunks(raw, io)


def _file_sums(base: str, prefix: str, io: IOOptions,
               known: dict[str, tuple[int, str]] | None = None) -> dict[str, dict]:
    """{store path: file record} of every file under `base`; hashes what `known` lacks, side by side."""
    known = known or {}
    paths = sorted(os.path.join(d, n) for d, _, names in os.walk(base) for n in names if n != SEGMENT_RECORD)
    todo = [p for p in paths if p not in known]
    with ThreadPoolExecutor(max(1, io.threads)) as pool:
        sums = dict(zip(todo, pool.map(lambda p: (os.path.getsize(p), digest_file(p, io.hash)), todo)))
    sums.update(known)
    return {prefix + "/" + os.path.relpath(p, base).replace(os.sep, "/"): record(*sums[p], io.hash) for p in paths}


@register_format
class ZarrBackend(StorageBackend):
    format = "zarr"
    compressions = CODECS

    # -- the location -------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(self.root)

    def check_target(self, flag: str = "--out") -> None:
        p = self.root
        if os.path.isfile(p):
            raise InputError(f"{flag} {p} exists and is a file, not a featstore store; choose another path")
        if os.path.isdir(p) and os.listdir(p) and not self.holds_store():
            raise InputError(f"{flag} {p} exists and is not a featstore store; choose another path (nothing there "
                             "is touched, not even with --overwrite)")
        if not os.path.exists(p):
            check_can_create(p, flag)

    def create(self) -> None:
        _ensure_groups(self.root, "segments")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the manifest -------------------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        p = os.path.join(self.root, MANIFEST)
        return load_json(p) if os.path.isfile(p) else None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(os.path.join(self.root, MANIFEST), manifest)

    # -- segments -----------------------------------------------------------------------------------------
    def write_segment(self, split, name, arrays, compression, chunk_bytes):
        rel = f"segments/{split}/{name}"
        parent = os.path.join(self.root, "segments", split)
        _ensure_groups(self.root, f"segments/{split}")
        tmp = partial_name(parent, name)
        shutil.rmtree(tmp, ignore_errors=True)
        known = _write_group(tmp, arrays, compression, chunk_bytes, self.io, name_prefix=rel + "/")
        return PendingSegment(split=split, name=name, files=_file_sums(tmp, rel, self.io, known), location=tmp)

    def commit_segment(self, pending, meta):
        record = {"files": pending.files, **pending.record, **meta}
        write_json_atomic(os.path.join(pending.location, SEGMENT_RECORD), record)
        os.replace(pending.location, os.path.join(self.root, "segments", pending.split, pending.name))
        return record

    def committed_segments(self):
        return committed_records(self.root)

    def discard_partial_segments(self):
        remove_partials(self.root)

    # -- arrays outside segments, and completion ----------------------------------------------------------
    def write_arrays(self, arrays, chunk_bytes):
        known = _write_group(self.root, arrays, "none", chunk_bytes, self.io)
        files: dict[str, dict] = {}
        for name in arrays:
            files.update(_file_sums(os.path.join(self.root, name), name, self.io, known))
        return files

    def finalize(self, manifest):
        write_json_atomic(os.path.join(self.root, "zarr.json"), _group_metadata(root_attributes(manifest)))
        self.write_manifest(manifest)

    def add_arrays(self, arrays, manifest):
        manifest.setdefault("files", {}).update(self.write_arrays(arrays, manifest["layout"]["chunk_bytes"]))
        self.finalize(manifest)  # the manifest last: until then the new arrays are not part of the store

    # -- reading ------------------------------------------------------------------------------------------
    def array(self, name: str) -> ArrayLike:
        import zarr

        try:
            raw = RawChunks.open(os.path.join(self.root, name))
            if raw is not None:
                return raw
            return zarr.open_array(os.path.join(self.root, name), mode="r", zarr_format=3)
        except Exception as e:  # noqa: BLE001 - surface any open failure as a store problem
            raise StoreError(f"store {self.root}: cannot open array {name!r} ({type(e).__name__}); "
                             "run `featstore verify` on it")

    def checksum(self, name, algorithm="sha256"):
        p = os.path.join(self.root, name)
        if not os.path.isfile(p):
            return None
        return os.path.getsize(p), digest_file(p, algorithm)

    def prefetch(self, prefixes: Iterable[str] | None = None, jobs: int = 8, progress: bool = False) -> int:
        return 0

    def close(self) -> None:
        pass

    def disk_usage(self) -> dict[str, tuple[int, int]]:
        out = {}
        for d, dirs, names in os.walk(self.root):
            dirs[:] = [x for x in dirs if not x.startswith(".")]  # partial segments are not part of the store
            if "zarr.json" not in names:
                continue
            meta = load_json(os.path.join(d, "zarr.json"), "array metadata")
            if not isinstance(meta, dict) or meta.get("node_type") != "array":
                continue
            dirs[:] = []
            try:
                ideal = int(np.prod(meta["shape"], dtype=np.int64)) * np.dtype(meta["data_type"]).itemsize
            except (KeyError, TypeError, ValueError):
                continue  # not an array this summary can size (verify names what is wrong with it)
            stored = sum(os.path.getsize(os.path.join(cd, n)) for cd, _, ns in os.walk(os.path.join(d, "c"))
                         for n in ns)
            out[os.path.relpath(d, self.root).replace(os.sep, "/")] = (stored, ideal)
        return out

    # -- sharing ------------------------------------------------------------------------------------------
    def publication(self) -> Publication:
        with open(os.path.join(self.root, MANIFEST), "rb") as f:
            raw = f.read()  # published byte for byte: a pulled copy is identical
        m = validate_published(json.loads(raw), self.root)
        local = {rel: os.path.join(self.root, *rel.split("/")) for rel in transfer_files(m)}
        return Publication(manifest=m, raw_manifest=raw, local_files=local)

    @classmethod
    def install_pulled(cls, staging, dest, manifest, raw_manifest):
        files = set(transfer_files(manifest))
        for dirpath, _, names in os.walk(staging):  # left-overs of an interrupted pull
            for n in names:
                p = os.path.join(dirpath, n)
                if os.path.relpath(p, staging).replace(os.sep, "/") not in files:
                    os.remove(p)
        dirs = {""}
        for rel in files:  # group metadata above every array: the copy is a browsable Zarr tree
            if rel != "zarr.json" and rel.endswith("/zarr.json"):
                parts = rel.split("/")[:-2]
                dirs.update("/".join(parts[:i + 1]) for i in range(len(parts)))
        for d in sorted(dirs):
            _ensure_groups(staging, d)
        write_json_atomic(os.path.join(staging, "zarr.json"), _group_metadata(root_attributes(manifest)))
        with open(os.path.join(staging, MANIFEST), "wb") as f:
            f.write(raw_manifest)  # byte for byte what was published
        os.rename(staging, dest)
