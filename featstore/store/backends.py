"""Which backend serves a path or URL: the one place that maps formats to backend classes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InputError, StoreError
from ..io.cache import FileCache
from ..io.transport import Remote, is_url
from .base import StorageBackend, StoreReader
from .formats import FORMATS_BY_NAME
from .hdf5_backend import PUBLISHED_NAME, HDF5Backend  # noqa: F401 - importing a backend registers its format
from .manifest import MANIFEST
from .object_backend import ObjectStoreBackend
from .remote_backend import RemoteBackend
from .zarr_backend import ZarrBackend

BACKENDS: dict[str, type[StorageBackend]] = FORMATS_BY_NAME  # filled by @register_format on import above
DEFAULT_FORMAT = ZarrBackend.format  # a directory of chunk files: writes in place to a URL, reads remotely by chunk
FORMATS = (DEFAULT_FORMAT,) + tuple(f for f in BACKENDS if f != DEFAULT_FORMAT)
URL_WRITERS: dict[str, type[StorageBackend]] = {ObjectStoreBackend.format: ObjectStoreBackend}


def check_url_format(out: str, fmt: str) -> str | None:
    """The problem with writing format `fmt` straight to `out`, or None: only some formats write to a URL."""
    if not is_url(out) or fmt in URL_WRITERS:
        return None
    return (f"--out {out}: a URL takes --format {' or '.join(URL_WRITERS)} (an {fmt} store is written locally, "
            "then published with `featstore push`)")


def compressions(fmt: str) -> tuple[str, ...]:
    """The compressions a writable format offers (empty for an unknown format)."""
    cls = BACKENDS.get(fmt)
    return cls.compressions if cls is not None else ()


def local_backend(path: str, fmt: str | None = None) -> StorageBackend:
    """The backend for a local store, by explicit format or by what lies at `path` (a `.h5` file is HDF5)."""
    if fmt is None:
        fmt = next((f for f, cls in BACKENDS.items() if cls.single_file and cls.claims_path(path)), DEFAULT_FORMAT)
    if fmt not in BACKENDS:
        raise StoreError(f"unknown format {fmt!r}: use {' or '.join(FORMATS)}")
    return BACKENDS[fmt](path)


def writable_backend(out: str, fmt: str, storage_options: dict[str, Any] | None = None) -> StorageBackend:
    """The backend `extract` writes through: local by format, or a Zarr store straight at an fsspec URL."""
    if not is_url(out):
        return local_backend(out, fmt)
    problem = check_url_format(out, fmt)
    if problem:
        raise InputError(problem)
    return URL_WRITERS[fmt](Remote(out, storage_options))


def remote_backend(url: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None,
                   cache_max_bytes: int | None = None) -> RemoteBackend:
    return RemoteBackend(Remote(url, storage_options), FileCache(cache_dir, cache_max_bytes))


def is_published_copy(path: str) -> bool:
    """A store as `featstore push` publishes an HDF5 store (its file beside a manifest) on a plain path."""
    return os.path.isfile(os.path.join(path, PUBLISHED_NAME)) and os.path.isfile(os.path.join(path, MANIFEST))


def open_backend(path: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None,
                 cache_max_bytes: int | None = None) -> StoreReader:
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
