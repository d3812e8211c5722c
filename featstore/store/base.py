"""The storage interface: every physical format implements `StorageBackend`; nothing outside this package
names a format, `zarr` or `h5py`.

A store's logical content is the same in every format: named arrays under `segments/<split>/<seg>/...`,
`labels/<split>/<col>`, `label_features/<col>/L<k>`, and a JSON manifest written last. Backends differ in
how they lay that out, make a segment appear atomically, checksum it, publish it and install a pulled copy.
What a backend can do is declared (`read_only`, `supports_append`, `is_remote`), never guessed.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Protocol

import numpy as np

from ..errors import StoreError
from ..io.hashing import IOOptions

SEGMENT_RECORD = "segment.json"

# Dimension names of every array a store holds, by the last part of its name (Zarr `dimension_names`).
DIMENSIONS = {
    "tokens": ("token", "hidden"), "cls": ("example", "hidden"), "mean": ("example", "hidden"),
    "offsets": ("example_edge",), "length": ("example",), "row": ("example",), "id_bytes": ("byte",),
    "id_offsets": ("example_edge",), "input_ids": ("token",),
    # token/span tasks: per-token alignment (-1 = special token / not context), gold records as JSON
    "word_index": ("token",), "char_start": ("token",), "char_end": ("token",),
    "json_bytes": ("byte",), "json_offsets": ("example_edge",),
    # side arrays of 8-bit codes (featstore.store.encoding)
    "tokens_scale": ("token",), "cls_scale": ("example",), "mean_scale": ("example",),
    **{f"{kind}_{side}": ("hidden",) for kind in ("tokens", "cls", "mean") for side in ("shift", "gain")},
}


def dimension_names(name: str, ndim: int) -> tuple[str, ...] | None:
    """Names for array `name` (e.g. `segments/train/s00000/L6/tokens`), or None when unknown."""
    parts = name.split("/")
    if parts[0] in ("labels", "spans"):
        dims: tuple[str, ...] = ("example",)
    elif parts[0] == "token_labels":
        dims = ("token",)
    elif parts[0] == "label_features":
        dims = ("label", "hidden")
    else:
        dims = DIMENSIONS.get(parts[-1], ())
    return dims if len(dims) == ndim else None


class ArrayLike(Protocol):
    """What readers get back from `StorageBackend.array`: a shaped array that slices into numpy."""

    shape: tuple[int, ...]

    def __getitem__(self, key: Any) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class PendingSegment:
    """A segment written under a temporary name: invisible to readers until `commit_segment`."""

    split: str
    name: str
    files: dict[str, dict[str, Any]]  # store path -> {size, <algorithm>: digest} (featstore.io.hashing)
    location: str  # where the backend wrote it (backend-private)
    record: dict[str, Any] = field(default_factory=dict)  # backend-specific record fields


@dataclass(frozen=True, kw_only=True)
class Publication:
    """What `featstore push` sends: the manifest as published, its bytes, and store path -> local file."""

    manifest: dict[str, Any]
    raw_manifest: bytes
    local_files: dict[str, str]


def chunk_rows(shape: tuple[int, ...], itemsize: int, chunk_bytes: int) -> tuple[int, ...]:
    """Chunks span whole rows, at most `chunk_bytes` each, and fit the row count: the number of chunks is
    fixed first, then rows per chunk = ceil(rows / chunks). The last chunk (stored full size by Zarr and HDF5)
    then pads fewer rows than there are chunks, instead of up to a whole chunk (measured before on an 8-bit
    store: 32% of its bytes were padding)."""
    row_bytes = itemsize * int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else itemsize
    n_rows = max(1, shape[0] if shape else 1)
    most = max(1, chunk_bytes // max(row_bytes, 1))
    chunks = -(-n_rows // most)
    return (-(-n_rows // chunks),) + tuple(shape[1:])


def root_attributes(manifest: dict[str, Any]) -> dict[str, Any]:
    """A short summary of the manifest for the root group, so generic Zarr/HDF5 browsers show what a store
    is. The manifest stays the source of truth."""
    return {"featstore": {
        "fingerprint": manifest.get("fingerprint"), "model": manifest.get("model", {}).get("name"),
        "layers": manifest.get("settings", {}).get("layers"), "dtype": manifest.get("settings", {}).get("dtype"),
        "encoding": manifest.get("settings", {}).get("encoding", manifest.get("settings", {}).get("dtype")),
        "splits": {k: v.get("n_examples") for k, v in manifest.get("dataset", {}).get("splits", {}).items()},
        "complete": manifest.get("complete"), "manifest": "manifest.json",
    }}


class StoreReader(ABC):
    """The read side of a store at `root` (a path or URL): what `open_store`, verify and pull need."""

    format: ClassVar[str]
    read_only: ClassVar[bool] = True
    is_remote: ClassVar[bool] = False  # files come through the local cache (prefetch helps)

    def __init__(self, root: str, io: IOOptions | None = None):
        self.root = root
        self.io = io or IOOptions()  # threads and checksum algorithm of the files this backend writes

    def holds_store(self) -> bool:
        """Whether `root` holds a featstore store (complete or not): a manifest of ours that validates."""
        from .manifest import validate

        try:
            m = self.read_manifest()
            return m is not None and validate(m, self.root) is m
        except (StoreError, OSError, ValueError):
            return False
        finally:
            self.close()

    def writable(self) -> "StorageBackend":
        """This backend, to write through; a published store refuses (it changes by pulling it first)."""
        if self.read_only or not isinstance(self, StorageBackend):
            raise StoreError(f"{self.root} is a published store and read-only; pull it to change it")
        return self

    @abstractmethod
    def exists(self) -> bool:
        """Whether anything of a store (complete or partial) lies at `root`."""

    @abstractmethod
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest as stored (not yet validated), or None when there is none."""

    @abstractmethod
    def array(self, name: str) -> ArrayLike:
        """A stored array by name, opened lazily."""

    @abstractmethod
    def checksum(self, name: str, algorithm: str = "sha256") -> tuple[int, str] | None:
        """(size, hex digest by `algorithm`) of a checksummed item as it is now, or None if it is missing."""

    @abstractmethod
    def prefetch(self, prefixes: Iterable[str] | None = None, jobs: int = 8, progress: bool = False) -> int:
        """Fetch files under `prefixes` (default all) ahead of reading; bytes fetched (0 for local stores)."""

    @abstractmethod
    def close(self) -> None:
        """Release open files."""

    def disk_usage(self) -> dict[str, tuple[int, int]] | None:
        """Per stored array: (bytes its data takes on disk, bytes of its values), or None where the format
        cannot tell (stores read from a URL). Padding of the last chunk is the difference."""
        return None


class StorageBackend(StoreReader):
    """A writable physical format of a store at `root`: everything a reader does, plus writing."""

    read_only: ClassVar[bool] = False
    supports_append: ClassVar[bool] = True  # segments commit one at a time: resume, distributed writers
    single_file: ClassVar[bool] = False  # published as one file, fetched whole before reading
    compressions: ClassVar[tuple[str, ...]] = ("none",)

    @classmethod
    def claims_path(cls, path: str) -> bool:
        """Whether an existing or named local `path` is a store of this format (by its name or kind)."""
        return False

    @classmethod
    def published_files(cls, manifest: dict[str, Any]) -> list[tuple[str, Any]]:
        """(path, {size, sha256}) of the files a published store of this format consists of, beside its
        manifest, as the (untrusted) manifest declares them: every segment file plus labels by default."""
        items = list(manifest.get("files", {}).items())
        for seg in manifest.get("segments", []):
            items += list(seg.get("files", {}).items())
        return items

    # -- the location -------------------------------------------------------------------------------------
    @abstractmethod
    def check_target(self, flag: str = "--out") -> None:
        """Refuse, before any work, a `root` that cannot become this store: a file or directory of something
        else (never touched, even to overwrite it), or a place without write permission."""

    @abstractmethod
    def create(self) -> None:
        """Prepare an empty store at `root`."""

    @abstractmethod
    def remove(self) -> None:
        """Remove the store at `root` (complete or partial) entirely."""

    # -- the manifest -------------------------------------------------------------------------------------
    @abstractmethod
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the working manifest of a store being written (atomically)."""

    # -- segments -----------------------------------------------------------------------------------------
    @abstractmethod
    def write_segment(self, split: str, name: str, arrays: dict[str, np.ndarray], compression: str,
                      chunk_bytes: int) -> PendingSegment:
        """Write a segment whole under a temporary name and checksum it."""

    @abstractmethod
    def commit_segment(self, pending: PendingSegment, meta: dict[str, Any]) -> dict[str, Any]:
        """Make a written segment visible with its record (`files` + `meta`); returns the record."""

    @abstractmethod
    def committed_segments(self) -> dict[str, dict[str, Any]]:
        """Records of the segments in place, by `split/name`."""

    @abstractmethod
    def discard_partial_segments(self) -> None:
        """Remove segments a killed writer left half-written."""

    # -- arrays outside segments, and completion ----------------------------------------------------------
    @abstractmethod
    def write_arrays(self, arrays: dict[str, np.ndarray], chunk_bytes: int) -> dict[str, dict[str, Any]]:
        """Write arrays beside the segments (labels, label features); returns their checksums."""

    @abstractmethod
    def finalize(self, manifest: dict[str, Any]) -> None:
        """Complete the store: whatever packing the format needs, then the manifest, last."""

    @abstractmethod
    def add_arrays(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        """Add arrays to a complete store and replace its manifest (its `files` updated) so that a crash
        leaves the store as it was."""

    # -- sharing ------------------------------------------------------------------------------------------
    @abstractmethod
    def publication(self) -> Publication:
        """The files of a complete local store as `featstore push` publishes them."""

    @classmethod
    @abstractmethod
    def install_pulled(cls, staging: str, dest: str, manifest: dict[str, Any], raw_manifest: bytes) -> None:
        """Turn a staging directory holding every verified file of a pulled store into a local store at
        `dest` (renamed into place whole)."""
