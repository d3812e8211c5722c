"""HDF5: one file. During extraction each segment is its own part file under `<root>.parts/` (a killed
run never corrupts a shared file); `finalize` packs the parts into the `.h5` with the manifest as a root
attribute, written last. Checksums are per dataset (its raw values). Published as `store.h5` beside a
`manifest.json`."""
from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import numpy as np

from ..errors import InputError, StoreError
from ..io.files import check_can_create, load_json, write_json_atomic
from ..io.hashing import IOOptions, algorithm_of, digest_bytes, digest_file, record
from .base import ArrayLike, PendingSegment, Publication, StorageBackend, chunk_rows, root_attributes
from .formats import register_format
from .local import committed_records, partial_name, remove_partials
from .manifest import MANIFEST, validate_published

CODECS = ("none", "lzf", "gzip")
PUBLISHED_NAME = "store.h5"  # the one data file of a published HDF5 store


def _compression(compression: str) -> dict:
    if compression == "none":
        return {}
    if compression in ("lzf", "gzip"):
        return {"compression": compression, **({"compression_opts": 1} if compression == "gzip" else {})}
    raise StoreError(f"unknown compression {compression!r} for hdf5: use one of {', '.join(CODECS)}")


def _array_digest(data: np.ndarray, algorithm: str) -> str:
    return digest_bytes(np.ascontiguousarray(data).view(np.uint8).reshape(-1).data, algorithm)


def _write_datasets(f: Any, arrays: dict[str, np.ndarray], compression: str, chunk_bytes: int,
                    io: IOOptions) -> dict[str, dict]:
    """Write `arrays` into the open file; their values are hashed on `io.threads` threads meanwhile (h5py
    writes hold the GIL, hashing does not)."""
    kw = _compression(compression)
    with ThreadPoolExecutor(max(1, io.threads)) as pool:
        digests = {name: pool.submit(_array_digest, data, io.hash) for name, data in arrays.items()}
        for name, data in arrays.items():
            if name in f:
                del f[name]
            chunks = chunk_rows(data.shape, data.dtype.itemsize, chunk_bytes) if data.size else None
            f.create_dataset(name, data=data, chunks=chunks, **(kw if data.ndim == 2 and data.size else {}))
        return {name: record(data.nbytes, digests[name].result(), io.hash) for name, data in arrays.items()}


@register_format
class HDF5Backend(StorageBackend):
    """`root` is the final `.h5` path."""

    format = "hdf5"
    compressions = CODECS
    single_file = True  # published as the one .h5 file beside its manifest

    @classmethod
    def claims_path(cls, path: str) -> bool:
        return path.endswith((".h5", ".hdf5")) or os.path.isfile(path)

    @classmethod
    def published_files(cls, manifest: dict[str, Any]) -> list[tuple[str, Any]]:
        h = manifest.get("hdf5")
        if not isinstance(h, dict):
            raise StoreError("manifest of a published hdf5 store lacks its 'hdf5' file entry")
        return [(h.get("file"), {k: h.get(k) for k in ("size", algorithm_of(h))})]

    def __init__(self, root: str, io: IOOptions | None = None):
        super().__init__(root, io)
        self.parts = root + ".parts"
        self._file: Any = None
        self._lock = threading.Lock()

    def _h5(self) -> Any:
        """The store file; while a store is being written, the part holding its non-segment arrays (a resumed
        run reads back the projection it fitted)."""
        import h5py

        if self._file is None:
            extra = os.path.join(self.parts, "extra.h5")
            path = extra if not os.path.isfile(self.root) and os.path.isfile(extra) else self.root
            self._file = h5py.File(path, "r")
        return self._file

    # -- the location -------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(self.root) or os.path.exists(self.parts)

    def check_target(self, flag: str = "--out") -> None:
        p = self.root
        if os.path.isdir(p):
            raise InputError(f"{flag} {p} is a directory; --format hdf5 writes one file, e.g. {flag} {p}.h5")
        if os.path.isfile(p) and not self.holds_store():
            raise InputError(f"{flag} {p} exists and is not a featstore store; choose another path (nothing there "
                             "is touched, not even with --overwrite)")
        if not os.path.exists(p):
            check_can_create(p, flag)

    def create(self) -> None:
        os.makedirs(self.parts, exist_ok=True)

    def remove(self) -> None:
        self.close()
        if os.path.exists(self.root):
            os.remove(self.root)
        shutil.rmtree(self.parts, ignore_errors=True)

    # -- the manifest -------------------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
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
        return load_json(p) if os.path.isfile(p) else None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        os.makedirs(self.parts, exist_ok=True)
        write_json_atomic(os.path.join(self.parts, MANIFEST), manifest)

    # -- segments -----------------------------------------------------------------------------------------
    def write_segment(self, split, name, arrays, compression, chunk_bytes):
        import h5py

        parent = os.path.join(self.parts, "segments", split)
        os.makedirs(parent, exist_ok=True)
        tmp = partial_name(parent, name + ".h5")
        with h5py.File(tmp, "w") as f:
            sums = _write_datasets(f, arrays, compression, chunk_bytes, self.io)
        rel = f"segments/{split}/{name}"
        return PendingSegment(split=split, name=name, files={f"{rel}/{k}": v for k, v in sums.items()},
                              location=tmp, record={"compression": compression, "chunk_bytes": chunk_bytes})

    def commit_segment(self, pending, meta):
        record = {"files": pending.files, **pending.record, **meta}
        final = os.path.join(self.parts, "segments", pending.split, pending.name)
        write_json_atomic(final + ".json", record)  # record first: a part without its record is ignored
        os.replace(pending.location, final + ".h5")
        return record

    def committed_segments(self):
        return committed_records(self.parts, ".h5")

    def discard_partial_segments(self):
        remove_partials(self.parts)

    # -- arrays outside segments, and completion ----------------------------------------------------------
    def write_arrays(self, arrays, chunk_bytes):
        import h5py

        os.makedirs(self.parts, exist_ok=True)  # packed into the final file by finalize; a part meanwhile
        with h5py.File(os.path.join(self.parts, "extra.h5"), "a") as f:
            return _write_datasets(f, arrays, "none", chunk_bytes, self.io)

    def finalize(self, manifest):
        """Pack every part into one file, manifest last, then rename into place."""
        import h5py

        tmp = f"{self.root}.partial-{os.getpid()}"
        with h5py.File(tmp, "w") as out:
            for key in committed_records(self.parts, ".h5"):
                with h5py.File(os.path.join(self.parts, "segments", key + ".h5"), "r") as part:
                    for name in part:
                        part.copy(part[name], out, name=f"segments/{key}/{name}")
            extra = os.path.join(self.parts, "extra.h5")
            if os.path.isfile(extra):
                with h5py.File(extra, "r") as part:
                    for name in part:
                        part.copy(part[name], out, name=name)
            out.attrs["featstore"] = json.dumps(root_attributes(manifest)["featstore"])
            out.attrs["manifest"] = json.dumps(manifest)
        self.close()
        os.replace(tmp, self.root)
        shutil.rmtree(self.parts, ignore_errors=True)

    def add_arrays(self, arrays, manifest):
        """HDF5 cannot replace part of a file atomically: edit a copy, then rename it over the original."""
        import h5py

        self.close()
        tmp = f"{self.root}.labels-{os.getpid()}"
        shutil.copyfile(self.root, tmp)
        try:
            with h5py.File(tmp, "a") as f:
                manifest.setdefault("files", {}).update(_write_datasets(f, arrays, "none",
                                                                        manifest["layout"]["chunk_bytes"], self.io))
                f.attrs["manifest"] = json.dumps(manifest)
            os.replace(tmp, self.root)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    # -- reading ------------------------------------------------------------------------------------------
    def array(self, name: str) -> ArrayLike:
        try:
            return self._h5()[name]
        except KeyError:
            raise StoreError(f"store {self.root}: dataset {name!r} is missing; run `featstore verify` on it")

    def checksum(self, name, algorithm="sha256"):
        with self._lock:  # verify calls this from several threads: one read of the file at a time, ...
            try:
                ds = self._h5()[name]
            except KeyError:
                return None
            data = np.asarray(ds[()])  # ... the hashing below runs side by side
        return int(data.nbytes), _array_digest(data, algorithm)

    def prefetch(self, prefixes: Iterable[str] | None = None, jobs: int = 8, progress: bool = False) -> int:
        return 0

    def disk_usage(self) -> dict[str, tuple[int, int]] | None:
        import h5py

        if not os.path.isfile(self.root):
            return None  # still being written: its parts are packed at the end
        out = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = (int(obj.id.get_storage_size()), int(obj.size) * obj.dtype.itemsize)

        self._h5().visititems(visit)
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- sharing ------------------------------------------------------------------------------------------
    def publication(self) -> Publication:
        m = self.read_manifest()
        self.close()
        if m is None:
            raise StoreError(f"{self.root} is not a featstore store (no manifest)")
        algorithm = m.get("layout", {}).get("hash", "sha256")  # the store's own choice for its one file
        m["hdf5"] = {"file": PUBLISHED_NAME, **record(os.path.getsize(self.root), digest_file(self.root, algorithm),
                                                      algorithm)}
        validate_published(m, self.root)
        return Publication(manifest=m, raw_manifest=json.dumps(m, indent=1).encode(),
                           local_files={PUBLISHED_NAME: self.root})

    @classmethod
    def install_pulled(cls, staging, dest, manifest, raw_manifest):
        os.replace(os.path.join(staging, manifest["hdf5"]["file"]), dest)
        shutil.rmtree(staging, ignore_errors=True)
