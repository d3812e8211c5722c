"""Reading a published store in place (read-only): any fsspec URL, through the verified local file cache.

Each file is fetched whole, checked against the manifest's sha256, the first time a chunk of it is needed
(zarr asks for several chunks at once, so fetches run concurrently). A published HDF5 store is its one file,
fetched, then read by the HDF5 backend. Remote manifests are untrusted: size-bounded and validated first.
"""
from __future__ import annotations

import asyncio
import functools
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from ..errors import InputError, StoreError
from ..io.cache import FileCache, mismatch
from ..io.hashing import expected
from ..io.transport import Remote
from .base import ArrayLike, PendingSegment, Publication, StorageBackend
from .hdf5_backend import HDF5Backend
from .manifest import EXTRACT_MARKER, MANIFEST, PUSH_MARKER, transfer_files, validate_published


def parse_manifest(raw: bytes, source: str) -> dict[str, Any]:
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{source}: manifest is not valid JSON ({e}); refusing the store")
    return validate_published(m, source)


def read_published(remote: Remote, unfinished_ok: bool = False) -> tuple[dict[str, Any], bytes] | None:
    """(validated manifest, its bytes) of the store published at `remote`; None when nothing is there.
    An unfinished upload (a push marker, no manifest) is an error that says how to finish it, unless
    `unfinished_ok` (push, which finishes it)."""
    raw = remote.read_small(MANIFEST)
    if raw is None:
        if not unfinished_ok and remote.read_small(PUSH_MARKER, 1 << 16) is not None:
            raise StoreError(f"{remote.url} is an unfinished upload (no manifest yet); re-run the same "
                             "`featstore push` to finish it")
        if not unfinished_ok and remote.read_small(EXTRACT_MARKER, 1 << 24) is not None:
            raise StoreError(f"{remote.url} is incomplete: an extraction to it has not finished; re-run the same "
                             "`featstore extract` to resume it")
        return None
    return parse_manifest(raw, remote.url), raw


class RemoteBackend(StorageBackend):
    """Read-only backend over a published store; every file comes through the verified local cache."""

    format = "remote"
    read_only = True
    supports_append = False
    is_remote = True

    def __init__(self, remote: Remote, cache: FileCache):
        super().__init__(remote.url)
        self.remote = remote
        self.cache = cache
        self.manifest: dict[str, Any] | None = None
        self.files: dict[str, dict] = {}
        self._h5: HDF5Backend | None = None
        self._h5_checked = False
        self._h5_lock = threading.Lock()  # verify checks datasets from several threads

    @property
    def _published_format(self) -> str | None:
        return self.manifest["format"] if self.manifest else None

    @property
    def fingerprint(self) -> str:
        assert self.manifest is not None
        return self.manifest["fingerprint"]

    # -- the location (read-only) -------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.remote.read_small(MANIFEST) is not None

    def check_target(self, flag: str = "--out") -> None:
        self._refuse_write()

    def create(self) -> None:
        self._refuse_write()

    def remove(self) -> None:
        self._refuse_write()

    # -- the manifest -------------------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        got = read_published(self.remote)
        if got is None:
            return None
        self.manifest = got[0]
        self.files = transfer_files(self.manifest)
        return self.manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self._refuse_write()

    # -- writing (refused) --------------------------------------------------------------------------------
    def write_segment(self, split, name, arrays, compression, chunk_bytes) -> PendingSegment:
        self._refuse_write()
        raise AssertionError

    def commit_segment(self, pending, meta) -> dict[str, Any]:
        self._refuse_write()
        raise AssertionError

    def committed_segments(self) -> dict[str, dict[str, Any]]:
        self._refuse_write()
        raise AssertionError

    def discard_partial_segments(self) -> None:
        self._refuse_write()

    def write_arrays(self, arrays, chunk_bytes) -> dict[str, dict[str, Any]]:
        self._refuse_write()
        raise AssertionError

    def finalize(self, manifest) -> None:
        self._refuse_write()

    def add_arrays(self, arrays, manifest) -> None:
        self._refuse_write()

    # -- reading ------------------------------------------------------------------------------------------
    def read_file(self, rel: str) -> bytes | None:
        meta = self.files.get(rel)
        if meta is None:
            return None
        return self.cache.read(self.remote, self.fingerprint, rel, meta)

    def fetch(self, rel: str) -> str:
        return self.cache.fetch(self.remote, self.fingerprint, rel, self.files[rel])

    def _local_h5(self) -> HDF5Backend:
        if self._h5 is None:
            (rel,) = self.files
            self._h5 = HDF5Backend(self.fetch(rel))
        return self._h5

    def array(self, name: str) -> ArrayLike:
        if self._published_format == "hdf5":
            return self._local_h5().array(name)
        import zarr

        if f"{name}/zarr.json" not in self.files:
            raise StoreError(f"store {self.root}: array {name!r} is not in its manifest; the store is damaged")
        return zarr.open_array(store=_cached_zarr_store(self, name), mode="r", zarr_format=3)

    def checksum(self, name: str, algorithm: str = "sha256") -> tuple[int, str] | None:
        """Verifies the remote copy itself (not the cache): downloads it again, keeping it when it matches."""
        if self._published_format == "hdf5":
            with self._h5_lock:
                if not self._h5_checked:
                    (rel,) = self.files
                    got = self.cache.refresh(self.remote, self.fingerprint, rel, self.files[rel])
                    if got != expected(self.files[rel]):
                        raise mismatch(self.remote.url, rel, self.files[rel], got)
                    self._h5_checked = True
                return self._local_h5().checksum(name, algorithm)
        meta = self.files.get(name)
        if meta is None:
            return None
        return self.cache.refresh(self.remote, self.fingerprint, name, meta)

    def prefetch(self, prefixes: Iterable[str] | None = None, jobs: int = 8, progress: bool = False) -> int:
        """Fetch every file under `prefixes` (default: all) into the cache in parallel; returns bytes."""
        from tqdm.auto import tqdm

        prefixes = tuple(p.rstrip("/") + "/" for p in prefixes) if prefixes is not None else None
        todo = [r for r in self.files if prefixes is None or r.startswith(prefixes) or self._published_format == "hdf5"]
        total = sum(self.files[r]["size"] for r in todo)
        with tqdm(total=total, unit="B", unit_scale=True, desc="fetch", disable=not progress) as bar, \
                ThreadPoolExecutor(max(1, jobs)) as pool:
            for rel in pool.map(lambda r: (self.fetch(r), r)[1], todo):
                bar.update(self.files[rel]["size"])
        return total

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    # -- sharing ------------------------------------------------------------------------------------------
    def publication(self) -> Publication:
        raise InputError(f"push takes a local store, not a URL ({self.root}); to copy between locations, "
                         "pull then push")

    @classmethod
    def install_pulled(cls, staging, dest, manifest, raw_manifest) -> None:
        raise StoreError("a pulled store is installed as its own format (zarr or hdf5), never as a remote one")


def _cached_zarr_store(backend: RemoteBackend, prefix: str) -> Any:
    return _cached_store_class()(backend, prefix)


@functools.lru_cache(maxsize=1)
def _cached_store_class() -> type:
    """A read-only zarr v3 store over one array of a RemoteBackend: keys map to manifest files. Built on first
    use so that importing this module does not import zarr."""
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
    from zarr.core.buffer.core import default_buffer_prototype

    class CachedZarrStore(Store):
        supports_writes = False
        supports_deletes = False
        supports_partial_writes = False
        supports_listing = True

        def __init__(self, backend: RemoteBackend, prefix: str) -> None:
            super().__init__(read_only=True)
            self.backend, self.prefix = backend, prefix

        def __eq__(self, other: object) -> bool:
            return isinstance(other, CachedZarrStore) and other._key == self._key

        def __hash__(self) -> int:
            return hash(self._key)

        @property
        def _key(self) -> tuple[int, str]:
            return id(self.backend), self.prefix

        def _rel(self, key: str) -> str:
            return f"{self.prefix}/{key}" if key else self.prefix

        async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
            data = await asyncio.to_thread(self.backend.read_file, self._rel(key))
            if data is None:
                return None
            if isinstance(byte_range, RangeByteRequest):
                data = data[byte_range.start:byte_range.end]
            elif isinstance(byte_range, OffsetByteRequest):
                data = data[byte_range.offset:]
            elif isinstance(byte_range, SuffixByteRequest):
                data = data[max(0, len(data) - byte_range.suffix):]
            return (prototype or default_buffer_prototype()).buffer.from_bytes(data)

        async def get_partial_values(self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]) -> list[Any]:
            return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

        async def exists(self, key: str) -> bool:
            return self._rel(key) in self.backend.files

        async def set(self, key: str, value: Any) -> None:
            self.backend._refuse_write()

        async def delete(self, key: str) -> None:
            self.backend._refuse_write()

        def _keys(self) -> list[str]:
            base = self.prefix + "/"
            return [r[len(base):] for r in self.backend.files if r.startswith(base)]

        async def list(self):
            for k in self._keys():
                yield k

        async def list_prefix(self, p: str):
            for k in self._keys():
                if k.startswith(p):
                    yield k

        async def list_dir(self, p: str):
            base = p.rstrip("/") + "/" if p else ""
            seen = set()
            for k in self._keys():
                if k.startswith(base):
                    head = k[len(base):].split("/", 1)[0]
                    if head not in seen:
                        seen.add(head)
                        yield head

    return CachedZarrStore
