"""Which backend serves a path or URL: the one place that maps formats to backend classes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InputError, StoreError
from ..io.cache import FileCache
from ..io.transport import Remote, is_url
from .base import StorageBackend
from .hdf5_backend import PUBLISHED_NAME, HDF5Backend
from .manifest import MANIFEST
from .object_backend import ObjectStoreBackend
from .remote_backend import RemoteBackend
from .zarr_backend import ZarrBackend

BACKENDS: dict[str, type[StorageBackend]] = {"zarr": ZarrBackend, "hdf5": HDF5Backend}
FORMATS = tuple(BACKENDS)


def compressions(fmt: str) -> tuple[str, ...]:
    """The compressions a writable format offers (empty for an unknown format)."""
    cls = BACKENDS.get(fmt)
    return cls.compressions if cls is not None else ()


def local_backend(path: str, fmt: str | None = None) -> StorageBackend:
    """The backend for a local store, by explicit format or by what lies at `path` (a `.h5` file is HDF5)."""
    if fmt is None:
        fmt = "hdf5" if path.endswith((".h5", ".hdf5")) or os.path.isfile(path) else "zarr"
    if fmt not in BACKENDS:
        raise StoreError(f"unknown format {fmt!r}: use {' or '.join(FORMATS)}")
    return BACKENDS[fmt](path)


def writable_backend(out: str, fmt: str, storage_options: dict[str, Any] | None = None) -> StorageBackend:
    """The backend `extract` writes through: local by format, or a Zarr store straight at an fsspec URL."""
    if not is_url(out):
        return local_backend(out, fmt)
    if fmt != "zarr":
        raise InputError(f"--out {out}: a URL takes --format zarr (an HDF5 file is one object: write it locally "
                         "and `featstore push` it)")
    return ObjectStoreBackend(Remote(out, storage_options))


def remote_backend(url: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None,
                   cache_max_bytes: int | None = None) -> RemoteBackend:
    return RemoteBackend(Remote(url, storage_options), FileCache(cache_dir, cache_max_bytes))


def is_published_copy(path: str) -> bool:
    """A store as `featstore push` publishes an HDF5 store (its file beside a manifest) on a plain path."""
    return os.path.isfile(os.path.join(path, PUBLISHED_NAME)) and os.path.isfile(os.path.join(path, MANIFEST))


def open_backend(path: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None,
                 cache_max_bytes: int | None = None) -> StorageBackend:
    """The backend to read whatever lies at `path`: a URL or a published copy is read through the verified
    cache; a local Zarr directory or HDF5 file directly."""
    if is_url(path):
        return remote_backend(path, storage_options, cache_dir, cache_max_bytes)
    if is_published_copy(path):
        return remote_backend(Path(os.path.abspath(path)).as_uri(), storage_options, cache_dir, cache_max_bytes)
    return local_backend(path)


def install_pulled(staging: str, dest: str, manifest: dict[str, Any], raw_manifest: bytes) -> None:
    """Install a pulled store (every file verified in `staging`) at `dest` in its own format."""
    BACKENDS[manifest["format"]].install_pulled(staging, dest, manifest, raw_manifest)
