"""featstore: extract a frozen encoder's hidden states once into a shareable, verified store.

Packages by stage, imports one way (errors <- io <- store <- extract, share; heads reads through store):
    io/       local checksummed files, fsspec transport, verified file cache, background threads
    store/    the storage interface and its Zarr, HDF5 and remote backends; manifest; reader
    extract/  inputs, model loading, planning, forward pass, background writer, the run
    share/    push, pull, ls
    verify.py info and verify;  labels.py add-labels;  convert.py re-encode/subset a store
"""
__version__ = "0.1.0"

from .errors import ExtractionError, FeatstoreError, InputError, StoreError  # noqa: E402
from .store import Split, Store, open_store  # noqa: E402

__all__ = ["open_store", "Store", "Split", "FeatstoreError", "InputError", "StoreError", "ExtractionError",
           "__version__"]
