"""Local, size-bounded, content-addressed cache for files of remote stores.

A file lives at `<root>/<fingerprint>/<sha256[:2]>/<sha256>`: keyed by the store's fingerprint and the file's
checksum from the manifest, so a second epoch, a second run or a teammate on the same machine reads it locally,
and two stores with the same fingerprint share it. Every file is checked against its checksum the first time a
process uses it; a cached copy that fails is deleted and fetched again. Files enter the cache whole and verified
(temporary name, then rename), so a killed process never leaves a half-written entry under a real name. When the
cache grows past its bound, the least recently used files are evicted.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from typing import TYPE_CHECKING

from ..errors import StoreError
from .hashing import algorithm_of, expected, file_matches

if TYPE_CHECKING:
    from .transport import Remote

GiB = 1 << 30
DEFAULT_MAX_GB = 50.0
PART = ".part-"


def default_cache_dir() -> str:
    """`$FEATSTORE_CACHE_DIR`, else the user cache directory (e.g. ~/.cache/featstore)."""
    env = os.environ.get("FEATSTORE_CACHE_DIR")
    if env:
        return env
    import platformdirs

    return platformdirs.user_cache_dir("featstore")


def default_max_bytes() -> int:
    raw = os.environ.get("FEATSTORE_CACHE_MAX_GB", str(DEFAULT_MAX_GB))
    try:
        gb = float(raw)
    except ValueError:
        raise StoreError(f"FEATSTORE_CACHE_MAX_GB={raw!r} is not a number of GiB (e.g. 50)")
    return int(gb * GiB)


class ChecksumError(StoreError):
    """A fetched file does not match the size or checksum its manifest declares."""

    def __init__(self, message: str, rel: str):
        super().__init__(message)
        self.rel = rel


class FileCache:
    """Verified local copies of remote files; safe to share between threads and processes."""

    def __init__(self, root: str | None = None, max_bytes: int | None = None):
        self.root = os.path.abspath(os.path.expanduser(root or default_cache_dir()))
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        self._verified: set[str] = set()
        self._locks = [threading.Lock() for _ in range(64)]  # striped: one fetch per file at a time
        self._guard = threading.Lock()
        self._usage: int | None = None

    def path(self, fingerprint: str, sha256: str) -> str:
        # both are validated 64-digit hex strings (manifest.validate_published): safe path components
        return os.path.join(self.root, fingerprint, sha256[:2], sha256)

    def _lock(self, key: str) -> threading.Lock:
        return self._locks[hash(key) % len(self._locks)]

    def fetch(self, remote: "Remote", fingerprint: str, rel: str, meta: dict) -> str:
        """Local path of a verified copy of `rel`, downloading it if absent or damaged."""
        path = self.path(fingerprint, expected(meta)[1])
        if meta["size"] > self.max_bytes:
            raise StoreError(f"{remote.url}: file {rel} ({meta['size'] / GiB:.2f} GiB) is larger than the cache bound "
                             f"({self.max_bytes / GiB:.2f} GiB); raise FEATSTORE_CACHE_MAX_GB, or `featstore pull` "
                             "the store and read the local copy")
        with self._lock(path):
            if path in self._verified and os.path.isfile(path):
                self._mark(path)  # a use: eviction takes the least recently used files first
                return path
            if os.path.isfile(path):
                if file_matches(path, meta):
                    self._mark(path)
                    return path
                os.remove(path)  # a damaged cache entry: fetch it again
            got = self._download(remote, rel, meta, path)
            if got != expected(meta):
                raise mismatch(remote.url, rel, meta, got)
            return path

    def refresh(self, remote: "Remote", fingerprint: str, rel: str, meta: dict) -> tuple[int, str] | None:
        """Download `rel` again whatever the cache holds; (size, digest) of what the remote serves, or None
        if it is missing. A copy that matches the manifest replaces the cached one."""
        path = self.path(fingerprint, expected(meta)[1])
        with self._lock(path):
            try:
                return self._download(remote, rel, meta, path)
            except FileNotFoundError:
                return None

    def read(self, remote: "Remote", fingerprint: str, rel: str, meta: dict) -> bytes:
        for _ in range(3):  # another process may evict the file between fetch and open
            path = self.fetch(remote, fingerprint, rel, meta)
            try:
                with open(path, "rb") as f:
                    return f.read(meta["size"] + 1)
            except FileNotFoundError:
                self._verified.discard(path)
        raise StoreError(f"cache {self.root}: {rel} keeps disappearing; is the cache bound (FEATSTORE_CACHE_MAX_GB) "
                         "smaller than one file?")

    def _download(self, remote: "Remote", rel: str, meta: dict, path: str) -> tuple[int, str]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}{PART}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            got = remote.download(rel, meta["size"], tmp, algorithm_of(meta))
            if got == expected(meta):
                os.replace(tmp, path)
                self._mark(path)
                self._account(meta["size"], keep=path)
            return got
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _mark(self, path: str) -> None:
        self._verified.add(path)
        try:
            os.utime(path)  # recency for eviction
        except OSError:
            pass

    # -- size bound ----------------------------------------------------------------------------------------
    def _entries(self) -> list[tuple[float, int, str]]:
        out = []
        for dirpath, _, names in os.walk(self.root):
            for n in names:
                p = os.path.join(dirpath, n)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                if PART in n and st.st_mtime > time.time() - 3600:
                    continue  # another process's download in progress
                out.append((st.st_mtime, st.st_size, p))
        return out

    def usage(self) -> int:
        return sum(e[1] for e in self._entries())

    def _account(self, size: int, keep: str | None = None) -> None:
        with self._guard:
            if self._usage is None:
                self._usage = self.usage()
            else:
                self._usage += size
            if self._usage <= self.max_bytes:
                return
        self.evict(keep=keep)

    def evict(self, target: int | None = None, keep: str | None = None) -> int:
        """Remove least recently used files until the cache holds at most `target` bytes (default 80% of
        the bound), never `keep` (the file just fetched for use). Returns the bytes freed."""
        target = int(self.max_bytes * 0.8) if target is None else target
        entries = sorted(self._entries())
        total = sum(e[1] for e in entries)
        freed = 0
        for _, size, p in entries:
            if total - freed <= target:
                break
            if p == keep:
                continue
            try:
                os.remove(p)
            except OSError:
                continue
            self._verified.discard(p)
            freed += size
        with self._guard:
            self._usage = total - freed
        return freed


def mismatch(url: str, rel: str, meta: dict, got: tuple[int, str] | None) -> ChecksumError:
    if got is None:
        what = "is missing"
    elif got[0] != meta["size"]:
        n = f"more than {meta['size']}" if got[0] > meta["size"] else str(got[0])
        what = f"has {n} bytes, the manifest says {meta['size']}"
    else:
        what = f"fails its {algorithm_of(meta)} checksum"
    return ChecksumError(f"{url}: file {rel} {what}: the remote copy is corrupted or was changed after publishing; "
                         "ask its publisher to push it again", rel)


