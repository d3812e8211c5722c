"""The storage layer: one abstract interface (`StorageBackend`), its Zarr, HDF5 and remote (read-only)
backends, the manifest, and the reader (`open_store`). The only package that knows a physical format."""
from .backends import FORMATS, compressions, install_pulled, local_backend, open_backend, remote_backend, \
    writable_backend
from .base import PendingSegment, Publication, StorageBackend
from .reader import Split, Store, open_store

__all__ = ["open_store", "Store", "Split", "StorageBackend", "PendingSegment", "Publication", "FORMATS",
           "compressions", "local_backend", "open_backend", "remote_backend", "install_pulled", "writable_backend"]
