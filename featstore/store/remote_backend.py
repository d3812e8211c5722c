"""Reading a published store in place (read-only): any fsspec URL, through the verified local file cache.

Each file is fetched whole, checked against the manifest's sha256, the first time a chunk of it is needed
(zarr asks for several chunks at once, so fetches run concurrently). A single-file format (HDF5) is
fetched whole, then read by its own backend. Remote manifests are untrusted: size-bounded and validated first.
"""
from __future__ import annotations

import asyncio
import functools
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from ..errors import StoreError
from ..io.cache import FileCache, mismatch
from ..io.hashing import expected
from ..io.transport import Remote
from .base import ArrayLike, StorageBackend, StoreReader
from .formats import format_backend
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


class RemoteBackend(StoreReader):
    """Read-only backend over a published store; every file comes through the verified local cache."""

    format = "remote"
    is_remote = True

    def __init__(self, remote: Remote, cache: FileCache):
        super().__init__(remote.url)
        self.remote = remote
        self.cache = cache
        self.manifest: dict[str, Any] | None = None
        self.files: dict[str, dict] = {}
        self._whole: StorageBackend | None = None  # a single-file format's local copy, once fetched
        self._whole_checked = False
        self._whole_lock = threading.Lock()  # verify checks datasets from several threads

    @property
    def _single_file(self) -> bool:
        return bool(self.manifest) and format_backend(self.manifest["format"], self.root).single_file

    @property
    def fingerprint(self) -> str:
        assert self.manifest is not None
        return self.manifest["fingerprint"]

    def exists(self) -> bool:
        return self.remote.read_small(MANIFEST) is not None

    # -- the manifest -------------------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        got = read_published(self.remote)
        if got is None:
            return None
        self.manifest = got[0]
        self.files = transfer_files(self.manifest)
        return self.manifest

    # -- reading ------------------------------------------------------------------------------------------
    def read_file(self, rel: str) -> bytes | None:
        meta = self.files.get(rel)
        if meta is None:
            return None
        return self.cache.read(self.remote, self.fingerprint, rel, meta)

    def fetch(self, rel: str) -> str:
        return self.cache.fetch(self.remote, self.fingerprint, rel, self.files[rel])

    def _local_copy(self) -> StorageBackend:
        if self._whole is None:
            (rel,) = self.files
            self._whole = format_backend(self.manifest["format"], self.root)(self.fetch(rel))
        return self._whole

    def array(self, name: str) -> ArrayLike:
        if self._single_file:
            return self._local_copy().array(name)
        import zarr

        if f"{name}/zarr.json" not in self.files:
            raise StoreError(f"store {self.root}: array {name!r} is not in its manifest; the store is damaged")
        return zarr.open_array(store=_cached_zarr_store(self, name), mode="r", zarr_format=3)

    def checksum(self, name: str, algorithm: str = "sha256") -> tuple[int, str] | None:
        """Verifies the remote copy itself (not the cache): downloads it again, keeping it when it matches."""
        if self._single_file:
            with self._whole_lock:
                if not self._whole_checked:
                    (rel,) = self.files
                    got = self.cache.refresh(self.remote, self.fingerprint, rel, self.files[rel])
                    if got != expected(self.files[rel]):
                        raise mismatch(self.remote.url, rel, self.files[rel], got)
                    self._whole_checked = True
                return self._local_copy().checksum(name, algorithm)
        meta = self.files.get(name)
        if meta is None:
            return None
        return self.cache.refresh(self.remote, self.fingerprint, name, meta)

    def prefetch(self, prefixes: Iterable[str] | None = None, jobs: int = 8, progress: bool = False) -> int:
        """Fetch every file under `prefixes` (default: all) into the cache in parallel; returns bytes."""
        from ..io.progress import progress_bar

        prefixes = tuple(p.rstrip("/") + "/" for p in prefixes) if prefixes is not None else None
        todo = [r for r in self.files if prefixes is None or r.startswith(prefixes) or self._single_file]
        total = sum(self.files[r]["size"] for r in todo)
        with progress_bar(progress, total=total, unit="B", unit_scale=True, desc="fetch") as bar, \
                ThreadPoolExecutor(max(1, jobs)) as pool:
            for rel in pool.map(lambda r: (self.fetch(r), r)[1], todo):
                bar.update(self.files[rel]["size"])
        return total

    def close(self) -> None:
        if self._whole is not None:
            self._whole.close()
            self._whole = None


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
            self.backend.writable()

        async def delete(self, key: str) -> None:
            self.backend.writable()

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
