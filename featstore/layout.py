"""The two physical layouts of a store behind one small interface.

Logical content is identical: named arrays under `segments/<split>/<seg>/...`, `labels/<split>/<col>`,
`label_features/<col>/L<k>` and a JSON manifest. Zarr v3 keeps each array as a directory of chunk files and
each segment as its own sub-directory (written whole under a temporary name, then renamed). HDF5 writes
each segment to its own part file during extraction (so a killed run never corrupts a shared file) and
packs the parts into one `.h5` at the end; its manifest is a root attribute written last.

Checksums are per file for Zarr (what lies on disk) and per dataset for HDF5 (its raw values).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from typing import Any, Iterator

import numpy as np

from .errors import StoreError

MANIFEST = "manifest.json"
CODECS = {"zarr": ("none", "zstd", "blosc-zstd", "blosc-lz4"), "hdf5": ("none", "lzf", "gzip")}
SEGMENT_RECORD = "segment.json"
BF16 = "bfloat16"


# -- dtype helpers: numpy has no bfloat16, so bf16 is stored as its raw 16 bits and tagged ------------------

def to_storable(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.view(np.uint16) if dtype == BF16 else x


def from_stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values -> numpy (bf16 widened exactly to float32)."""
    if dtype == BF16:
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x


def sha256_file(path: str, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def sha256_array(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).view(np.uint8).reshape(-1).data).hexdigest()


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_json(path: str, what: str = "manifest") -> Any:
    """A JSON file of a store; a damaged one is a StoreError naming it, never a traceback."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: the {what} is not valid JSON ({str(e)[:80]}); the store is damaged, "
                         "re-extract or re-pull it")


def check_can_create(path: str, flag: str) -> None:
    """Fail before any expensive work if `path` cannot be created: a file on the way, or no permission."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise StoreError(f"{flag} {path}: {parent} is a file, not a directory; choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{flag} {path}: no permission to write in {parent}; choose another {flag}")


def chunk_rows(shape: tuple[int, ...], itemsize: int, chunk_bytes: int) -> tuple[int, ...]:
    """Chunks span whole rows; a few MiB each, never more rows than exist."""
    row_bytes = itemsize * int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else itemsize
    rows = max(1, min(shape[0] or 1, chunk_bytes // max(row_bytes, 1)))
    return (rows,) + tuple(shape[1:])


class Layout:
    """What the writer and the reader need from a physical format."""

    format: str

    def __init__(self, root: str):
        self.root = root

    # writing
    def write_segment(self, rel: str, arrays: dict[str, np.ndarray], compression: str, chunk_bytes: int) -> dict:
        raise NotImplementedError

    def committed_segments(self, clean: bool = True) -> dict[str, dict]:
        """Records of segments in place; `clean` also removes partial ones left by a killed writer."""
        raise NotImplementedError

    def write_arrays(self, arrays: dict[str, np.ndarray], compression: str, chunk_bytes: int) -> dict:
        raise NotImplementedError

    def write_manifest(self, manifest: dict) -> None:
        raise NotImplementedError

    def finalize(self, manifest: dict) -> None:
        raise NotImplementedError

    # reading
    def read_manifest(self) -> dict | None:
        raise NotImplementedError

    def array(self, name: str) -> Any:
        raise NotImplementedError

    def checksum(self, name: str) -> tuple[int, str] | None:
        """(size, sha256) of a checksummed item, or None if it is missing."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _committed_records(base: str) -> dict[str, dict]:
    """Segments whose record exists: written whole and renamed into place."""
    out: dict[str, dict] = {}
    seg_root = os.path.join(base, "segments")
    if not os.path.isdir(seg_root):
        return out
    for split in sorted(os.listdir(seg_root)):
        sdir = os.path.join(seg_root, split)
        if not os.path.isdir(sdir):
            continue
        for name in sorted(os.listdir(sdir)):
            rec = os.path.join(sdir, name, SEGMENT_RECORD) if not name.endswith(".h5") else None
            if name.endswith(".h5"):
                rec = os.path.join(sdir, name[:-3] + ".json")
            if name.startswith(".") or not os.path.isfile(rec):
                continue
            out[f"{split}/{name.removesuffix('.h5')}"] = load_json(rec, "segment record")
    return out


def _remove_partials(base: str) -> None:
    seg_root = os.path.join(base, "segments")
    if not os.path.isdir(seg_root):
        return
    for split in os.listdir(seg_root):
        sdir = os.path.join(seg_root, split)
        for name in os.listdir(sdir):
            if name.startswith(".") and ".partial" in name:
                p = os.path.join(sdir, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


def _little_endian(data: np.ndarray) -> bool:
    """Zarr's default `bytes` codec stores little-endian values: a native array on a little-endian host."""
    return data.dtype.byteorder == "<" or (data.dtype.byteorder in ("=", "|") and sys.byteorder == "little")


def _write_small_json(path: str, obj: Any) -> None:
    """Metadata inside a segment being written: the segment's rename into place is what makes it visible."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def _array_metadata(data: np.ndarray, chunks: tuple[int, ...]) -> dict[str, Any]:
    """The Zarr v3 `zarr.json` of an uncompressed array, as zarr-python writes it."""
    codec: dict[str, Any] = {"name": "bytes"}
    if data.dtype.itemsize > 1:
        codec["configuration"] = {"endian": "little"}
    return {"shape": list(data.shape), "data_type": data.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0.0 if data.dtype.kind == "f" else 0, "codecs": [codec], "attributes": {},
            "zarr_format": 3, "node_type": "array", "storage_transformers": []}


def _write_groups(root: str, name: str) -> None:
    """Group metadata for `root` and every parent group of array `name` under it."""
    parts = name.split("/")[:-1]
    for i in range(len(parts) + 1):
        meta = os.path.join(root, *parts[:i], "zarr.json")
        if not os.path.isfile(meta):
            os.makedirs(os.path.dirname(meta), exist_ok=True)
            _write_small_json(meta, {"attributes": {}, "zarr_format": 3, "node_type": "group"})


def _write_raw_chunks(jobs: list[tuple[str, np.ndarray, int]]) -> dict[str, tuple[int, str]]:
    """Write uncompressed Zarr v3 chunks straight from memory and hash the same bytes on the way.

    What zarr-python itself would write for the `bytes` codec (keys `c/<i>/0...`, edge chunks padded to the
    full chunk shape with the fill value 0), without its per-chunk pipeline and without reading the files
    back to checksum them (benchmarks/bench_write.py: about twice the throughput).
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(args: tuple[str, np.ndarray, int, int]) -> tuple[str, tuple[int, str]]:
        adir, data, rows, i = args
        block = np.ascontiguousarray(data[i * rows:(i + 1) * rows])
        if len(block) < rows:  # edge chunk: zarr stores the full chunk shape
            block = np.concatenate([block, np.zeros((rows - len(block),) + data.shape[1:], dtype=data.dtype)])
        path = os.path.join(adir, "c", str(i), *["0"] * (data.ndim - 1))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buf = block.view(np.uint8).reshape(-1).data
        with open(path, "wb") as f:
            f.write(buf)
        return path, (len(buf), hashlib.sha256(buf).hexdigest())

    tasks = [(adir, data, rows, i) for adir, data, rows in jobs for i in range(-(-len(data) // rows))]
    with ThreadPoolExecutor(4) as pool:  # file writes and hashlib release the GIL
        return dict(pool.map(one, tasks))


class ZarrLayout(Layout):
    format = "zarr"

    def _codecs(self, compression: str):
        from zarr.codecs import BloscCodec, ZstdCodec

        if compression == "none":
            return None
        if compression == "zstd":
            return [ZstdCodec(level=1)]
        if compression == "blosc-zstd":
            return [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")]
        if compression == "blosc-lz4":
            return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]
        raise StoreError(f"unknown compression {compression!r} for zarr: use one of {', '.join(CODECS['zarr'])}")

    def _write_group(self, path: str, arrays: dict[str, np.ndarray], compression: str,
                     chunk_bytes: int) -> dict[str, tuple[int, str]]:
        """Write `arrays` under the group at `path`; returns (size, sha256) of the chunk files written raw.

        Uncompressed arrays (the default) are written without zarr-python: their `zarr.json` is the spec's
        plain JSON and their chunks are the raw bytes (`_write_raw_chunks`). Compressed ones go through zarr.
        """
        codecs = self._codecs(compression)
        raw, group = [], None
        for name, data in arrays.items():
            chunks = chunk_rows(data.shape, data.dtype.itemsize, chunk_bytes)
            adir = os.path.join(path, name)
            if os.path.exists(adir):
                shutil.rmtree(adir)  # replaced whole (add-labels on a column that exists)
            if (codecs is None or data.ndim != 2) and _little_endian(data):
                _write_groups(path, name)
                os.makedirs(adir)
                _write_small_json(os.path.join(adir, "zarr.json"), _array_metadata(data, chunks))
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
                                      compressors=codecs if data.ndim == 2 else None, fill_value=0)
            if data.size:
                arr[...] = data
        return _write_raw_chunks(raw)

    def _file_sums(self, base: str, prefix: str, known: dict[str, tuple[int, str]] | None = None) -> dict[str, dict]:
        from concurrent.futures import ThreadPoolExecutor

        known = known or {}
        paths = sorted(os.path.join(d, n) for d, _, names in os.walk(base) for n in names if n != SEGMENT_RECORD)
        todo = [p for p in paths if p not in known]
        with ThreadPoolExecutor(4) as pool:  # hashlib releases the GIL: hash files side by side
            sums = dict(zip(todo, pool.map(lambda p: (os.path.getsize(p), sha256_file(p)), todo)))
        sums.update(known)
        return {prefix + "/" + os.path.relpath(p, base).replace(os.sep, "/"): {"size": sums[p][0], "sha256": sums[p][1]}
                for p in paths}

    def write_segment(self, rel, arrays, compression, chunk_bytes):
        final = os.path.join(self.root, rel)
        parent, name = os.path.split(final)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        known = self._write_group(tmp, arrays, compression, chunk_bytes)
        files = self._file_sums(tmp, rel, known)
        record = {"files": files}
        return record, tmp, final

    def commit_segment(self, tmp: str, final: str, record: dict) -> None:
        write_json_atomic(os.path.join(tmp, SEGMENT_RECORD), record)
        os.replace(tmp, final)

    def committed_segments(self, clean=True):
        if clean:
            _remove_partials(self.root)
        return _committed_records(self.root)

    def write_arrays(self, arrays, compression, chunk_bytes):
        known = self._write_group(self.root, arrays, compression, chunk_bytes)
        files = {}
        for name in arrays:
            d = os.path.join(self.root, name)
            files.update(self._file_sums(d, name, known))
        return files

    def write_manifest(self, manifest):
        write_json_atomic(os.path.join(self.root, MANIFEST), manifest)

    def finalize(self, manifest):
        import zarr

        zarr.open_group(self.root, mode="a", zarr_format=3)  # root group metadata: the store is a Zarr hierarchy
        self.write_manifest(manifest)

    def read_manifest(self):
        p = os.path.join(self.root, MANIFEST)
        if not os.path.isfile(p):
            return None
        return load_json(p)

    def array(self, name):
        import zarr

        try:
            return zarr.open_array(os.path.join(self.root, name), mode="r", zarr_format=3)
        except Exception as e:  # noqa: BLE001 - surface any open failure as a store problem
            raise StoreError(f"store {self.root}: cannot open array {name!r} ({type(e).__name__}); "
                             "run `featstore verify` on it")

    def checksum(self, name):
        p = os.path.join(self.root, name)
        if not os.path.isfile(p):
            return None
        return os.path.getsize(p), sha256_file(p)

    def item_names(self, arrays: list[str]) -> Iterator[str]:
        return iter(arrays)


class H5Layout(Layout):
    """Single-file HDF5. During extraction `root` is the final `.h5` path; parts live in `<root>.parts/`."""

    format = "hdf5"

    def __init__(self, root: str):
        super().__init__(root)
        self.parts = root + ".parts"
        self._file = None

    def _h5(self):
        import h5py

        if self._file is None:
            self._file = h5py.File(self.root, "r")
        return self._file

    @staticmethod
    def _compression(compression: str) -> dict:
        if compression == "none":
            return {}
        if compression in ("lzf", "gzip"):
            return {"compression": compression, **({"compression_opts": 1} if compression == "gzip" else {})}
        raise StoreError(f"unknown compression {compression!r} for hdf5: use one of {', '.join(CODECS['hdf5'])}")

    def _write_datasets(self, f, arrays, compression, chunk_bytes, prefix=""):
        kw = self._compression(compression)
        sums = {}
        for name, data in arrays.items():
            full = f"{prefix}{name}"
            if full in f:
                del f[full]
            chunks = chunk_rows(data.shape, data.dtype.itemsize, chunk_bytes) if data.size else None
            f.create_dataset(full, data=data, chunks=chunks, **(kw if data.ndim == 2 and data.size else {}))
            sums[full] = {"size": int(data.nbytes), "sha256": sha256_array(data)}
        return sums

    def write_segment(self, rel, arrays, compression, chunk_bytes):
        import h5py

        final = os.path.join(self.parts, rel + ".h5")
        parent, name = os.path.split(final)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{name}.partial-{os.getpid()}")
        with h5py.File(tmp, "w") as f:
            sums = self._write_datasets(f, arrays, compression, chunk_bytes)
        record = {"files": {f"{rel}/{k}": v for k, v in sums.items()}, "compression": compression,
                  "chunk_bytes": chunk_bytes}
        return record, tmp, final

    def commit_segment(self, tmp, final, record):
        write_json_atomic(final[:-3] + ".json", record)  # record first: a part without its record is ignored
        os.replace(tmp, final)

    def committed_segments(self, clean=True):
        if clean:
            _remove_partials(self.parts)
        recs = _committed_records(self.parts)
        return {k: v for k, v in recs.items() if os.path.isfile(os.path.join(self.parts, "segments", k + ".h5"))}

    def write_arrays(self, arrays, compression, chunk_bytes):
        # Written into the final file at finalize; keep them as a part meanwhile.
        import h5py

        os.makedirs(self.parts, exist_ok=True)
        with h5py.File(os.path.join(self.parts, "extra.h5"), "a") as f:
            return self._write_datasets(f, arrays, compression, chunk_bytes)

    def write_manifest(self, manifest):
        os.makedirs(self.parts, exist_ok=True)
        write_json_atomic(os.path.join(self.parts, MANIFEST), manifest)

    def finalize(self, manifest):
        """Pack every part into one file, manifest last, then rename into place."""
        import h5py

        tmp = f"{self.root}.partial-{os.getpid()}"
        with h5py.File(tmp, "w") as out:
            for key in _committed_records(self.parts):
                with h5py.File(os.path.join(self.parts, "segments", key + ".h5"), "r") as part:
                    for name in part:
                        part.copy(part[name], out, name=f"segments/{key}/{name}")
            extra = os.path.join(self.parts, "extra.h5")
            if os.path.isfile(extra):
                with h5py.File(extra, "r") as part:
                    for name in part:
                        part.copy(part[name], out, name=name)
            out.attrs["manifest"] = json.dumps(manifest)
        os.replace(tmp, self.root)
        shutil.rmtree(self.parts, ignore_errors=True)

    def read_manifest(self):
        if os.path.isfile(self.root):
            try:
                raw = self._h5().attrs.get("manifest")
            except OSError as e:
                raise StoreError(f"{self.root} is not a readable HDF5 file ({e}); run `featstore verify`")
            try:
                return json.loads(raw) if raw is not None else None
            except ValueError as e:
                raise StoreError(f"{self.root}: the manifest is not valid JSON ({str(e)[:80]}); the store is damaged")
        p = os.path.join(self.parts, MANIFEST)
        if os.path.isfile(p):
            return load_json(p)
        return None

    def array(self, name):
        try:
            return self._h5()[name]
        except KeyError:
            raise StoreError(f"store {self.root}: dataset {name!r} is missing; run `featstore verify` on it")

    def checksum(self, name):
        try:
            ds = self._h5()[name]
        except KeyError:
            return None
        data = ds[()]
        return int(data.nbytes), sha256_array(np.asarray(data))

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def layout_for(path: str, fmt: str | None = None) -> Layout:
    """Pick the layout by explicit format or by what lies at `path`."""
    if fmt is None:
        if path.endswith((".h5", ".hdf5")) or (os.path.isfile(path) and not os.path.isdir(path)):
            fmt = "hdf5"
        else:
            fmt = "zarr"
    if fmt == "zarr":
        return ZarrLayout(path)
    if fmt == "hdf5":
        return H5Layout(path)
    raise StoreError(f"unknown format {fmt!r}: use zarr or hdf5")
