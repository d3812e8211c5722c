"""Stores behind fsspec URLs: storage options, bounded transfers, and reading a published store in place.

Anything fsspec opens works (`s3://`, `gs://`, `file://`, a shared file-system path...). S3 endpoints and
credentials come from the standard places (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles) plus
`--storage-option key=value`. A remote manifest is untrusted: it is size-bounded, validated before use, and
no file is ever read past the size it declares.

Reading in place: `RemoteLayout` serves the reader's arrays from the local `FileCache`, fetching each file
whole, verified against its sha256, the first time a chunk of it is needed (zarr asks for several chunks at
once, so fetches run concurrently). HDF5 stores are fetched as their one file.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator

from .cache import FileCache
from .errors import InputError, StoreError
from .layout import MANIFEST, H5Layout, Layout
from .manifest import transfer_files, validate_published

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")
MAX_MANIFEST_BYTES = 64 << 20
SMALL = 32 << 20  # files up to this size are fetched with one ranged GET
BLOCK = 8 << 20
PUSH_MARKER = ".featstore-push.json"


def is_url(path: str) -> bool:
    return isinstance(path, str) and bool(_SCHEME.match(path))


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """`key=value` pairs -> fsspec storage options. Values are JSON when they parse (`true`, `3`, `{...}`),
    else strings; dotted keys nest: `client_kwargs.endpoint_url=http://...`."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or any(not k for k in key.split(".")):
            raise InputError(f"--storage-option {pair!r}: use KEY=VALUE, e.g. anon=true or "
                             "client_kwargs.endpoint_url=http://localhost:9000")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise InputError(f"--storage-option {pair!r} conflicts with an earlier option {k}=...")
        node[leaf] = value
    return out


def filesystem(url: str, storage_options: dict[str, Any] | None = None):
    """(fsspec filesystem, root path without trailing slash) for a URL or a plain path."""
    import fsspec

    scheme = _SCHEME.match(url).group(1) if is_url(url) else "file"
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        fs.invalidate_cache()  # listings cached by an earlier operation may be stale
    except ImportError as e:
        pkg = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme, "its package")
        raise StoreError(f"{url}: reading {scheme}:// needs {pkg} (pip install {pkg}) [{e}]")
    except ValueError as e:
        raise StoreError(f"{url}: {e}")
    except TypeError as e:
        raise InputError(f"{url}: bad --storage-option for {scheme}:// ({e})")
    return fs, (root.rstrip("/") or root)


class Remote:
    """One store location (a 'directory' URL) and the few bounded operations sharing needs."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url.rstrip("/") if is_url(url) else url
        self.fs, self.root = filesystem(url, storage_options)

    @property
    def local(self) -> bool:
        proto = self.fs.protocol
        return "file" in (proto if isinstance(proto, (tuple, list)) else (proto,))

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    @contextlib.contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Transport failures become one-line StoreErrors; FileNotFoundError passes through for callers."""
        try:
            yield
        except (FileNotFoundError, StoreError):
            raise
        except Exception as e:  # noqa: BLE001 - botocore/aiohttp/OS errors: say which URL and what
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise StoreError(f"{self.url}: {what} failed ({type(e).__name__}{': ' + msg if msg else ''}); "
                             "check the URL, credentials and --storage-option settings")

    # -- reading ---------------------------------------------------------------------------------------------
    def read_small(self, rel: str, limit: int | None = None) -> bytes | None:
        """A small file (a manifest) whole, or None if absent; refuses anything larger than `limit`
        (default MAX_MANIFEST_BYTES)."""
        limit = MAX_MANIFEST_BYTES if limit is None else limit
        with self._io(f"reading {rel}"):
            try:
                data = self._cat(rel, limit + 1)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        if len(data) > limit:
            raise StoreError(f"{self.url}: {rel} is larger than {limit} bytes; refusing it as untrusted input")
        return data

    def read_manifest(self, source: str | None = None) -> dict[str, Any] | None:
        """The published manifest, validated; None when there is none."""
        raw = self.read_small(MANIFEST)
        if raw is None:
            return None
        return parse_manifest(raw, source or self.url)

    def _cat(self, rel: str, end: int) -> bytes:
        p = self.path(rel)
        if end <= 1:  # a range on an empty object is an error on S3: ask for its size instead
            return b"\0" if self.fs.size(p) else b""
        return self.fs.cat_file(p, start=0, end=end)

    def blocks(self, rel: str, size: int) -> Iterator[bytes]:
        """The bytes of `rel`, never more than size + 1 of them (one more reveals an oversized file)."""
        limit = size + 1
        with self._io(f"reading {rel}"):
            if size < SMALL:
                yield self._cat(rel, limit)
                return
            with self.fs.open(self.path(rel), "rb", block_size=BLOCK) as f:
                while limit > 0:
                    b = f.read(min(BLOCK, limit))
                    if not b:
                        return
                    limit -= len(b)
                    yield b

    def download(self, rel: str, size: int, dest: str) -> tuple[int, str]:
        """Stream `rel` into local file `dest`; returns (bytes, sha256) of what was received."""
        h, n = hashlib.sha256(), 0
        with open(dest, "wb") as out:
            for b in self.blocks(rel, size):
                h.update(b)
                n += len(b)
                out.write(b)
        return n, h.hexdigest()

    def digest(self, rel: str, size: int) -> tuple[int, str] | None:
        """(bytes, sha256) of the remote file without keeping it; None when it is missing."""
        h, n = hashlib.sha256(), 0
        try:
            for b in self.blocks(rel, size):
                h.update(b)
                n += len(b)
        except (FileNotFoundError, IsADirectoryError):
            return None
        return n, h.hexdigest()

    def listing(self) -> dict[str, int]:
        """Every file under the root: relative path -> size."""
        with self._io("listing"):
            try:
                found = self.fs.find(self.root, detail=True)
            except FileNotFoundError:
                return {}
        base = self.root.rstrip("/") + "/"
        return {p[len(base):]: int(info.get("size") or 0) for p, info in found.items()
                if p.startswith(base) and info.get("type", "file") == "file"}

    def ls(self, path: str) -> list[dict[str, Any]]:
        with self._io(f"listing {path}"):
            try:
                return self.fs.ls(path, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                return []

    # -- writing (push only) ---------------------------------------------------------------------------------
    def put_bytes(self, rel: str, data: bytes) -> None:
        """Write one object whole: S3-like stores make a PUT visible atomically; on a file system we write a
        temporary file and rename it."""
        with self._io(f"uploading {rel}"):
            if not self.local:
                self.fs.pipe_file(self.path(rel), data)
                return
            final = self.path(rel)
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{final}.part-{uuid.uuid4().hex[:8]}"
            self.fs.pipe_file(tmp, data)
            os.replace(tmp, final)

    def put_file(self, rel: str, local_path: str) -> None:
        with self._io(f"uploading {rel}"):
            if not self.local:
                self.fs.put_file(local_path, self.path(rel))
                return
            final = self.path(rel)
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{final}.part-{uuid.uuid4().hex[:8]}"
            self.fs.put_file(local_path, tmp)
            os.replace(tmp, final)

    def remove(self, rel: str) -> None:
        with self._io(f"removing {rel}"):
            try:
                self.fs.rm_file(self.path(rel))
            except FileNotFoundError:
                pass


def printable(s: Any) -> str | None:
    """Text from an untrusted manifest, safe to print: no control characters or terminal escapes."""
    if s is None:
        return None
    import unicodedata

    return "".join(c if unicodedata.category(c)[0] != "C" else "?" for c in str(s)[:1000])


def parse_manifest(raw: bytes, source: str) -> dict[str, Any]:
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{source}: manifest is not valid JSON ({e}); refusing the store")
    return validate_published(m, source)


# -- reading a published store in place --------------------------------------------------------------------

class RemoteLayout(Layout):
    """Read-only layout over a published store; every file comes through the verified local cache."""

    format = "remote"

    def __init__(self, remote: Remote, cache: FileCache):
        super().__init__(remote.url)
        self.remote = remote
        self.cache = cache
        self.manifest: dict[str, Any] | None = None
        self.files: dict[str, dict] = {}
        self._h5: H5Layout | None = None
        self._h5_checked = False

    def read_manifest(self) -> dict[str, Any] | None:
        m = self.remote.read_manifest()
        if m is not None:
            self.manifest = m
            self.files = transfer_files(m)
        return m

    @property
    def fingerprint(self) -> str:
        assert self.manifest is not None
        return self.manifest["fingerprint"]

    def read_file(self, rel: str) -> bytes | None:
        meta = self.files.get(rel)
        if meta is None:
            return None
        return self.cache.read(self.remote, self.fingerprint, rel, meta)

    def fetch(self, rel: str) -> str:
        return self.cache.fetch(self.remote, self.fingerprint, rel, self.files[rel])

    def _local_h5(self) -> H5Layout:
        if self._h5 is None:
            (rel,) = self.files
            self._h5 = H5Layout(self.fetch(rel))
        return self._h5

    def array(self, name: str) -> Any:
        if self.manifest and self.manifest["format"] == "hdf5":
            return self._local_h5().array(name)
        import zarr

        if f"{name}/zarr.json" not in self.files:
            raise StoreError(f"store {self.root}: array {name!r} is not in its manifest; the store is damaged")
        return zarr.open_array(store=CachedZarrStore(self, name), mode="r", zarr_format=3)

    def checksum(self, name: str) -> tuple[int, str] | None:
        """Verifies the remote copy itself (not the cache): downloads it again, keeping it when it matches."""
        if self.manifest and self.manifest["format"] == "hdf5":
            if not self._h5_checked:
                (rel,) = self.files
                got = self.cache.refresh(self.remote, self.fingerprint, rel, self.files[rel])
                if got != (self.files[rel]["size"], self.files[rel]["sha256"]):
                    from .cache import mismatch

                    raise mismatch(self.remote.url, rel, self.files[rel], got)
                self._h5_checked = True
            return self._local_h5().checksum(name)
        meta = self.files.get(name)
        if meta is None:
            return None
        return self.cache.refresh(self.remote, self.fingerprint, name, meta)

    def prefetch(self, prefixes: Iterable[str] | None = None, jobs: int = 8, progress: bool = False) -> int:
        """Fetch every file under `prefixes` (default: all) into the cache in parallel; returns bytes."""
        prefixes = tuple(p.rstrip("/") + "/" for p in prefixes) if prefixes is not None else None
        todo = [r for r in self.files if prefixes is None or r.startswith(prefixes) or self.manifest["format"] == "hdf5"]
        from tqdm.auto import tqdm

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

    def _read_only(self, *a: Any, **k: Any) -> Any:
        raise StoreError(f"{self.root} is a published store and read-only; pull it to change it")

    write_segment = write_arrays = write_manifest = finalize = committed_segments = _read_only


def open_remote(url: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None,
                cache_max_bytes: int | None = None) -> RemoteLayout:
    return RemoteLayout(Remote(url, storage_options), FileCache(cache_dir, cache_max_bytes))


def _zarr_store_base():
    from zarr.abc.store import Store

    return Store


class CachedZarrStore(_zarr_store_base()):
    """A read-only zarr v3 store over one array of a RemoteLayout: keys map to manifest files."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, layout: RemoteLayout, prefix: str):
        super().__init__(read_only=True)
        self.layout = layout
        self.prefix = prefix

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CachedZarrStore) and other.layout is self.layout and other.prefix == self.prefix

    def __hash__(self) -> int:
        return hash((id(self.layout), self.prefix))

    def _rel(self, key: str) -> str:
        return f"{self.prefix}/{key}" if key else self.prefix

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
        from zarr.core.buffer.core import default_buffer_prototype

        data = await asyncio.to_thread(self.layout.read_file, self._rel(key))
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
        return self._rel(key) in self.layout.files

    async def set(self, key: str, value: Any) -> None:
        self.layout._read_only()

    async def delete(self, key: str) -> None:
        self.layout._read_only()

    def _keys(self) -> list[str]:
        base = self.prefix + "/"
        return [r[len(base):] for r in self.layout.files if r.startswith(base)]

    async def list(self):
        for k in self._keys():
            yield k

    async def list_prefix(self, prefix: str):
        for k in self._keys():
            if k.startswith(prefix):
                yield k

    async def list_dir(self, prefix: str):
        base = prefix.rstrip("/") + "/" if prefix else ""
        seen = set()
        for k in self._keys():
            if k.startswith(base):
                head = k[len(base):].split("/", 1)[0]
                if head not in seen:
                    seen.add(head)
                    yield head
