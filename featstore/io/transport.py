"""Files behind fsspec URLs: storage options and bounded, verified transfers.

Anything fsspec opens works (`s3://`, `gs://`, `file://`, a shared file-system path...). S3 endpoints and
credentials come from the standard places (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles) plus
`--storage-option key=value`. A remote manifest is untrusted: it is size-bounded, validated before use, and
no file is ever read past the size it declares.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from typing import Any, Iterable, Iterator

from ..errors import InputError, StoreError
from .hashing import new_hasher

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")
MAX_MANIFEST_BYTES = 64 << 20
SMALL = 32 << 20  # files up to this size are fetched with one ranged GET
BLOCK = 8 << 20


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

    def _cat(self, rel: str, end: int) -> bytes:
        p = self.path(rel)
        if end <= 1:  # a range on an empty object is an error on S3: ask for its size instead
            return b"\0" if self.fs.size(p) else b""
        if self.local:  # in blocks: one read(end) would allocate `end` bytes up front, however small the file
            out = bytearray()
            with self.fs.open(p, "rb") as f:
                while len(out) < end and (b := f.read(min(1 << 20, end - len(out)))):
                    out += b
            return bytes(out)
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

    def download(self, rel: str, size: int, dest: str, algorithm: str = "sha256") -> tuple[int, str]:
        """Stream `rel` into local file `dest`; returns (bytes, digest by `algorithm`) of what was received."""
        h, n = new_hasher(algorithm), 0
        with open(dest, "wb") as out:
            for b in self.blocks(rel, size):
                h.update(b)
                n += len(b)
                out.write(b)
        return n, h.hexdigest()

    def digest(self, rel: str, size: int, algorithm: str = "sha256") -> tuple[int, str] | None:
        """(bytes, digest by `algorithm`) of the remote file without keeping it; None when it is missing."""
        h, n = new_hasher(algorithm), 0
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

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create `rel` holding `data` only if it does not exist, atomically: True if this call created it, False
        if it was already there. A file system: a complete temporary file hard-linked into place (link fails if
        the name exists, also on NFS), falling back to O_EXCL where links are not supported. S3: a conditional
        PUT (If-None-Match: *). Two racers can never both get True."""
        with self._io(f"creating {rel}"):
            if not self.local:
                try:
                    self.fs.pipe_file(self.path(rel), data, mode="create")
                except FileExistsError:
                    return False
                return True
            final = self.path(rel)
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{final}.part-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links here: exclusive creation (a reader may briefly see it empty)
                return _create_excl(final, data)
            finally:
                os.remove(tmp)

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


def _create_excl(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def printable(s: Any) -> str | None:
    """Text from an untrusted manifest, safe to print: no control characters or terminal escapes."""
    if s is None:
        return None
    import unicodedata

    return "".join(c if unicodedata.category(c)[0] != "C" else "?" for c in str(s)[:1000])
