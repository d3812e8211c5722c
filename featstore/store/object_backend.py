"""Writable Zarr store at an fsspec URL (s3://, gs://, file://...): extraction straight to object storage.

Each segment is written by the Zarr code into a local staging directory (one per process), uploaded file by
file, then its record, last; the staging copy is removed. A segment is committed at the URL once its record
is there, and a resume keeps it only if every file listed in the record is there with its size and sha256
(as `push` checks). Until the run is complete the URL holds the in-progress manifest under
EXTRACT_MARKER and no `manifest.json`, so readers refuse it; the complete manifest is written last, exactly
what `push` publishes, so readers, `pull` and `verify` see an ordinary published store.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Iterable

import numpy as np

from ..errors import InputError, StoreError
from ..io.background import parallel_map
from ..io.hashing import algorithm_of, expected
from ..io.transport import Remote
from .base import SEGMENT_RECORD, ArrayLike, PendingSegment, Publication, StorageBackend
from .manifest import EXTRACT_MARKER, MANIFEST
from .zarr_backend import ZarrBackend


class ObjectStoreBackend(StorageBackend):
    """Write side of a Zarr store at a URL; reading goes through `RemoteBackend` (open_store on the URL)."""

    format = "zarr"
    compressions = ZarrBackend.compressions
    read_only = False
    supports_append = False
    is_remote = True

    def __init__(self, remote: Remote, jobs: int = 8):
        super().__init__(remote.url)
        self.remote = remote
        self.jobs = jobs
        self._staging: ZarrBackend | None = None

    @property
    def staging(self) -> ZarrBackend:
        """This process's local scratch store: holds a segment only between writing and uploading it."""
        if self._staging is None:
            self._staging = ZarrBackend(os.path.join(tempfile.mkdtemp(prefix="featstore-upload-"), "store"), self.io)
            self._staging.create()
        return self._staging

    # -- the location -------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.read_manifest() is not None

    def check_target(self, flag: str = "--out") -> None:
        if not self.exists() and self.remote.listing():
            raise InputError(f"{flag} {self.root} is not empty and holds no featstore store; choose an empty "
                             "location (nothing there is touched, not even with --overwrite)")

    def create(self) -> None:
        pass  # object stores have no directories; the marker written by write_manifest claims the location

    def remove(self) -> None:
        if self.remote.read_small(MANIFEST) is not None:
            raise StoreError(f"{self.root} holds a published store; published stores are immutable: write to "
                             "another URL")
        files = list(self.remote.listing())
        parallel_map(files, lambda rel: self.remote.remove(rel) or True, self.jobs)

    # -- the manifest -------------------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        for name in (MANIFEST, EXTRACT_MARKER):
            raw = self.remote.read_small(name)
            if raw is not None:
                try:
                    return json.loads(raw)
                except (ValueError, UnicodeDecodeError) as e:
                    raise StoreError(f"{self.root}/{name} is not valid JSON ({e}); not a featstore store")
        return None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        raw = json.dumps(manifest, indent=1, sort_keys=True).encode()
        if manifest.get("complete"):
            self.remote.put_bytes(MANIFEST, raw)  # last: from now on readers see the whole store
            self.remote.remove(EXTRACT_MARKER)
        else:
            self.remote.put_bytes(EXTRACT_MARKER, raw)

    # -- segments -----------------------------------------------------------------------------------------
    def write_segment(self, split, name, arrays, compression, chunk_bytes) -> PendingSegment:
        return self.staging.write_segment(split, name, arrays, compression, chunk_bytes)

    def commit_segment(self, pending, meta) -> dict[str, Any]:
        prefix = f"segments/{pending.split}/{pending.name}/"
        self._upload(pending.location, prefix, pending.files)
        record = {"files": pending.files, **pending.record, **meta}
        self.remote.put_bytes(prefix + SEGMENT_RECORD, json.dumps(record, sort_keys=True).encode())  # last
        shutil.rmtree(pending.location, ignore_errors=True)
        return record

    def _upload(self, local_dir: str, prefix: str, files: dict[str, dict]) -> None:
        def one(rel: str) -> bool:
            self.remote.put_file(rel, os.path.join(local_dir, *rel[len(prefix):].split("/")))
            return True

        parallel_map(sorted(files), one, self.jobs)

    def _records(self) -> tuple[dict[str, dict], dict[str, int]]:
        present = self.remote.listing()
        records: dict[str, dict] = {}
        for rel in sorted(present):
            parts = rel.split("/")
            if len(parts) == 4 and parts[0] == "segments" and parts[3] == SEGMENT_RECORD:
                raw = self.remote.read_small(rel)
                if raw is not None:
                    records[f"{parts[1]}/{parts[2]}"] = json.loads(raw)
        return records, present

    def committed_segments(self) -> dict[str, dict[str, Any]]:
        """Segments whose record is at the URL with every file it lists, of its size (a listing: cheap).
        Checksums are checked once per run, by `discard_partial_segments`, before any rank lists these."""
        records, present = self._records()
        return {k: r for k, r in records.items()
                if all(present.get(f) == meta["size"] for f, meta in r["files"].items())}

    def discard_partial_segments(self) -> None:
        """Resume: keep a segment only if every file of its record is there with its size and sha256; remove
        the record of any other first (so it is no longer committed), then every stray segment file."""
        records, present = self._records()
        files = {(key, f): meta for key, r in records.items() for f, meta in r["files"].items()}
        sized = [kf for kf, meta in files.items() if present.get(kf[1]) == meta["size"]]
        good = set(parallel_map(sized, lambda kf: self.remote.digest(kf[1], files[kf]["size"],
                                                                     algorithm_of(files[kf])) ==
                                expected(files[kf]), self.jobs))
        bad = {key for key, f in files if (key, f) not in good}
        for key in sorted(bad):
            self.remote.remove(f"segments/{key}/{SEGMENT_RECORD}")
        keep = set(records) - bad
        strays = [rel for rel in present if rel.startswith("segments/") and "/".join(rel.split("/")[1:3]) not in keep]
        parallel_map(strays, lambda rel: self.remote.remove(rel) or True, self.jobs)

    # -- arrays outside segments, and completion ----------------------------------------------------------
    def write_arrays(self, arrays: dict[str, np.ndarray], chunk_bytes: int) -> dict[str, dict[str, Any]]:
        files = self.staging.write_arrays(arrays, chunk_bytes)
        self._upload(self.staging.root, "", files)
        return files

    def finalize(self, manifest: dict[str, Any]) -> None:
        self.write_manifest(manifest)

    def add_arrays(self, arrays, manifest) -> None:
        raise StoreError(f"{self.root}: published stores are immutable; pull it, add the labels, push a new copy")

    # -- reading: through open_store(URL), which verifies every file ----------------------------------------
    def array(self, name: str) -> ArrayLike:
        """An array written beside the segments (a fitted projection, read back by every rank and by a resumed
        run): its files are fetched into the local staging store and opened there."""
        base = name.rstrip("/") + "/"
        files = {rel: size for rel, size in self.remote.listing().items() if rel.startswith(base)}
        if not files:
            raise StoreError(f"{self.root}: array {name!r} is not there; the store is damaged, re-run with --overwrite")
        for rel in files:
            dest = os.path.join(self.staging.root, *rel.split("/"))
            if not os.path.isfile(dest):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                self.remote.download(rel, files[rel], dest)
        return self.staging.array(name)

    def checksum(self, name: str, algorithm: str = "sha256") -> tuple[int, str] | None:
        return self.remote.digest(name, self.remote.listing().get(name, 0), algorithm)

    def prefetch(self, prefixes: Iterable[str] | None = None, jobs: int = 8, progress: bool = False) -> int:
        return 0

    def close(self) -> None:
        if self._staging is not None:
            shutil.rmtree(os.path.dirname(self._staging.root), ignore_errors=True)
            self._staging = None

    def publication(self) -> Publication:
        raise StoreError(f"{self.root} is already at a URL; `featstore pull` it to copy it elsewhere")

    @classmethod
    def install_pulled(cls, staging, dest, manifest, raw_manifest) -> None:
        raise StoreError("pulled stores are installed by their format's backend")
