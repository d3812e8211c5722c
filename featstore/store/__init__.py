"""The storage layer: one abstract interface (`StoreReader`, extended by `StorageBackend` for writing), its
Zarr, HDF5 and remote (read-only) backends, the manifest, and the reader (`open_store`). The only package that
knows a physical format."""
from .backends import DEFAULT_FORMAT, FORMATS, check_url_format, compressions, install_pulled, local_backend, \
    open_backend, remote_backend, writable_backend
from .base import PendingSegment, Publication, StorageBackend, StoreReader
from .reader import Split, Store, open_store

__all__ = ["open_store", "Store", "Split", "StorageBackend", "StoreReader", "PendingSegment", "Publication", "FORMATS",
           "DEFAULT_FORMAT", "check_url_format", "compressions", "local_backend", "open_backend", "remote_backend",
           "install_pulled", "writable_backend"]
