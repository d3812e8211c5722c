"""File checksums: which algorithm a file record names, and hashing with it.

A store's manifest records each file as `{"size": n, "<algorithm>": "<hex digest>"}`: `sha256` (every store
written before BLAKE3 was offered, and the default) or `blake3` (measured about 2.5x faster per core,
benchmarks/RESULTS.md). The key names the algorithm, so a record written with either verifies with the same
code, and stores hashed with sha256 keep verifying unchanged. hashlib and blake3 release the GIL on large
buffers, so hashing on a pool of threads uses every core (`io_threads`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import InputError

ALGORITHMS = ("sha256", "blake3")
DEFAULT_ALGORITHM = "sha256"
_BUF = 1 << 22


class Hasher(Protocol):
    def update(self, data: Any) -> Any: ...

    def hexdigest(self) -> str: ...


def check_algorithm(name: str, flag: str = "--hash") -> str:
    if name not in ALGORITHMS:
        raise InputError(f"{flag} {name!r} is not a known checksum; use one of {', '.join(ALGORITHMS)}")
    if name == "blake3":
        try:
            import blake3  # noqa: F401
        except ImportError:
            raise InputError(f"{flag} blake3 needs the `blake3` package: pip install blake3 (or use {flag} sha256)")
    return name


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "blake3":
        import blake3

        return blake3.blake3()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def digest_bytes(data: Any, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """Hex digest of a bytes-like object (a memoryview of an array is hashed in place)."""
    h = new_hasher(algorithm)
    h.update(data)
    return h.hexdigest()


def digest_file(path: str, algorithm: str = DEFAULT_ALGORITHM) -> str:
    h = new_hasher(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_BUF):
            h.update(chunk)
    return h.hexdigest()


def algorithm_of(meta: dict[str, Any]) -> str:
    """The algorithm a file record names: `blake3` when it carries that key, else sha256."""
    return "blake3" if isinstance(meta, dict) and "blake3" in meta else "sha256"


def expected(meta: dict[str, Any]) -> tuple[int, str]:
    """(size, hex digest) a file record promises."""
    return meta["size"], meta[algorithm_of(meta)]


def record(size: int, digest: str, algorithm: str) -> dict[str, Any]:
    """A file record as manifests store it."""
    return {"size": int(size), algorithm: digest}


def file_matches(path: str, meta: dict[str, Any]) -> bool:
    """Whether the local file at `path` has the size and digest its record promises."""
    return os.path.isfile(path) and os.path.getsize(path) == meta["size"] and \
        digest_file(path, algorithm_of(meta)) == expected(meta)[1]


def default_io_threads() -> int:
    """Threads that write and hash segment files: twice the cores (a thread waiting on the disk leaves its core
    to one that hashes), at least 2, at most 8. benchmarks/bench_pipeline.py `--threads 1,2,4,8` measures it;
    on the shared 2-core machine the pool size made no difference beyond the noise (RESULTS.md)."""
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


@dataclass(frozen=True)
class IOOptions:
    """How a backend writes and checksums files: `threads` write and hash side by side; `hash` is the
    algorithm new file records use."""

    threads: int = field(default_factory=default_io_threads)
    hash: str = DEFAULT_ALGORITHM

    def __post_init__(self) -> None:
        if not isinstance(self.threads, int) or self.threads < 1:
            raise InputError(f"--io-threads {self.threads!r} must be a whole number of at least 1")
        check_algorithm(self.hash)
