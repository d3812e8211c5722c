"""Read a store: one logical array per split over its segments, for both physical formats.

No torch, no transformers: training heads reads features through this module alone.
"""
from __future__ import annotations

from functools import cached_property
from typing import Any, Sequence

import numpy as np

from ..errors import StoreError
from .backends import open_backend
from .base import ArrayLike, StoreReader
from .encoding import SIDE, decode, encoding_of, from_stored, is_coded
from .manifest import split_segments, validate
from .projection import array_names as projection_arrays


def open_store(path: str, *, allow_incomplete: bool = False, storage_options: dict[str, Any] | None = None,
               cache_dir: str | None = None, cache_max_bytes: int | None = None) -> "Store":
    """Open a complete store: a Zarr directory, an HDF5 file, or any fsspec URL of a published store
    (`s3://bucket/glue/sst2`, `file:///shared/sst2`). Incomplete stores are refused.

    A URL is read in place: each file is fetched whole on first use, verified against the manifest's sha256,
    and kept in a local cache (`cache_dir`, default `$FEATSTORE_CACHE_DIR` or the user cache directory; bound
    `cache_max_bytes`, default `$FEATSTORE_CACHE_MAX_GB` or 50 GiB). `storage_options` go to fsspec
    (endpoint, credentials, ...)."""
    backend = open_backend(path, storage_options, cache_dir, cache_max_bytes)
    if not backend.exists() and not backend.is_remote:
        raise StoreError(f"no store at {path}: check the path (a directory for zarr, a .h5 file for hdf5)")
    manifest = backend.read_manifest()
    if manifest is None:
        if backend.is_remote:
            raise StoreError(f"no store at {path} (no manifest.json there); check the URL, or list stores with "
                             "`featstore ls`")
        raise StoreError(f"{path} is not a featstore store (no manifest); extract one with `featstore extract`")
    validate(manifest, path)
    if not manifest["complete"] and not allow_incomplete:
        raise StoreError(f"store {path} is incomplete (extraction interrupted or still running); "
                         "re-run the same `featstore extract` command to finish it")
    store = Store(path, backend, manifest)
    store.open_args = {"storage_options": storage_options, "cache_dir": cache_dir, "cache_max_bytes": cache_max_bytes}
    return store


class Store:
    """A complete store opened for reading: what it holds (from the manifest) and its splits."""

    def __init__(self, path: str, backend: StoreReader, manifest: dict[str, Any]):
        self.path = path
        self.backend = backend
        self.manifest = manifest
        self._splits: dict[str, Split] = {}
        self.open_args: dict[str, Any] = {}  # how to open it again (in a DataLoader worker)

    def reopener(self) -> Any:
        """A picklable callable that opens this store again (in a DataLoader worker or another rank)."""
        import functools

        return functools.partial(open_store, self.path, **self.open_args)

    # -- what the store is ---------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["settings"]["layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["model"]["hidden_size"])

    @property
    def dtype(self) -> str:
        """The dtype readers return: the stored float dtype (bf16 widened), float32 for 8-bit codes."""
        return self.manifest["settings"]["dtype"]

    @property
    def encoding(self) -> str:
        """How values are stored: a float dtype, or 8-bit codes (`int8`, `fp8`) with scales beside them."""
        return encoding_of(self.manifest["settings"])

    @property
    def width(self) -> int:
        """Features per layer as stored: the projected width (`--project N`), else the hidden size."""
        return int(self.manifest["settings"].get("project") or self.hidden_size)

    def projection(self, layer: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean (D,), basis (D, N)) that mapped layer `layer` to the stored width, or None (not projected)."""
        if not self.manifest["settings"].get("project"):
            return None
        self.check_layers([layer])
        out = []
        for name, shape in zip(projection_arrays(layer), ((self.hidden_size,), (self.hidden_size, self.width))):
            arr = self.backend.array(name)
            if tuple(arr.shape) != shape:
                raise StoreError(f"store {self.path}: {name} has shape {tuple(arr.shape)}, expected {shape}; "
                                 "the store is damaged")
            out.append(np.asarray(arr[:], dtype=np.float32))
        return out[0], out[1]

    @property
    def task(self) -> str:
        """`sentence` (one label per example), `token` (a tag per word) or `span` (an answer span per example)."""
        return self.manifest["settings"].get("task", "sentence")

    @property
    def task_info(self) -> dict[str, Any]:
        """The manifest's `dataset.task` of a token/span store: tag names and scheme, alignment counts."""
        if self.task == "sentence":
            raise StoreError(f"store {self.path} holds a sentence task; token and span heads need a store extracted "
                             "with `featstore extract --task token|span`")
        return self.manifest["dataset"]["task"]

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["dataset"]["splits"])

    @property
    def label_columns(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.manifest["dataset"]["label_columns"]}

    def label_names(self, column: str) -> list[str] | None:
        return self._column(column)["names"]

    def label_features(self, column: str, layer: int) -> np.ndarray | None:
        """Features of the label names (mean over their tokens), or None if not recorded."""
        if column not in self.manifest.get("label_features", []):
            return None
        arr = self.backend.array(f"label_features/{column}/L{layer}")
        names = self.label_names(column) or []
        if tuple(arr.shape) != (len(names), self.width):
            raise StoreError(f"store {self.path}: label_features/{column}/L{layer} has shape {tuple(arr.shape)}, "
                             f"expected {(len(names), self.width)}; the store is damaged")
        return np.asarray(arr[:], dtype=np.float32)

    def split(self, name: str) -> "Split":
        if name not in self.manifest["dataset"]["splits"]:
            raise StoreError(f"store {self.path} has no split {name!r}; its splits are {', '.join(self.splits)}")
        if name not in self._splits:
            self._splits[name] = Split(self, name)
        return self._splits[name]

    def _column(self, column: str) -> dict[str, Any]:
        cols = self.label_columns
        if column not in cols:
            raise StoreError(f"store {self.path} has no label column {column!r}; "
                             f"it has {', '.join(cols) or 'none'} (add one with `featstore add-labels`)")
        return cols[column]

    def check_layers(self, layers: Sequence[int]) -> None:
        missing = [k for k in layers if k not in self.layers]
        if missing:
            raise StoreError(f"store {self.path} lacks layers {missing}; it holds {self.layers} "
                             "(re-extract with those --layers, or choose from these)")

    @property
    def is_remote(self) -> bool:
        return self.backend.is_remote

    def prefetch(self, splits: Sequence[str] | None = None, jobs: int = 8, progress: bool = False) -> int:
        """Fetch a remote store's files (of `splits`, default all) into the local cache in parallel, so the
        first epoch does not wait on one chunk at a time. Returns bytes; a no-op (0) for local stores."""
        prefixes = None
        if splits is not None:
            for s in splits:
                self.split(s)  # a clear error for an unknown split
            prefixes = [f"{kind}/{s}" for s in splits for kind in ("segments", "labels", "token_labels", "spans", "gold",
                                                            "gold_tags")] + ["label_features"]
        return self.backend.prefetch(prefixes, jobs=jobs, progress=progress)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r}, splits={self.splits}, layers={self.layers}, fingerprint={self.fingerprint[:12]})"


class Split:
    """One split seen as flat arrays in storage order (length-sorted); `rows` maps back to input order."""

    def __init__(self, store: Store, name: str):
        self.store = store
        self.name = name
        self.segments = split_segments(store.manifest, name)
        if not self.segments:
            raise StoreError(f"store {store.path}: split {name!r} has no segments; the store is damaged")
        counts = np.array([s["n_tokens"] for s in self.segments], dtype=np.int64)
        self._seg_token_start = np.concatenate([[0], np.cumsum(counts)])
        self._arrays: dict[str, Any] = {}

    def segment_array(self, seg: int, name: str) -> ArrayLike:
        """Array `name` (e.g. `L6/tokens`, `offsets`) of the split's `seg`-th segment, its shape checked
        against the manifest before any read."""
        key = f"segments/{self.name}/{self.segments[seg]['name']}/{name}"
        if key not in self._arrays:
            arr = self.store.backend.array(key)
            want = self._expected_shape(self.segments[seg], name)
            if want is not None and tuple(arr.shape) != want:  # before any read: shapes are untrusted input
                raise StoreError(f"store {self.store.path}: {key} has shape {tuple(arr.shape)} but the manifest "
                                 f"says {want}; the store is damaged, run `featstore verify` on it")
            self._arrays[key] = arr
        return self._arrays[key]

    def _expected_shape(self, seg: dict[str, Any], name: str) -> tuple[int, ...] | None:
        n, t, d = int(seg["n_examples"]), int(seg["n_tokens"]), self.store.width
        if name in ("length", "row"):
            return (n,)
        if name in ("offsets", "id_offsets"):
            return (n + 1,)
        if name in ("input_ids", "word_index", "char_start", "char_end"):
            return (t,)
        kind = name.rsplit("/", 1)[-1]
        if name.startswith("L") and "_" in kind:  # side arrays of 8-bit codes
            base, side = kind.split("_", 1)
            if side == "scale":
                return (t,) if base == "tokens" else (n,)
            return (d,)
        if name.startswith("L"):
            return (t, d) if kind == "tokens" else (n, d)
        return None  # id_bytes: bounded by id_offsets, which is checked

    def decoded(self, seg: int, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of feature array `name` (`L{k}/tokens|cls|mean`) of one segment, decoded to
        float (float16/float32 as stored, bf16 widened, 8-bit codes decoded to float32)."""
        raw = np.asarray(self.segment_array(seg, name)[start:stop])
        enc = self.store.encoding
        if not is_coded(enc):
            return from_stored(raw, enc)
        side = {s: np.asarray(self.segment_array(seg, f"{name}_{s}")[start:stop] if s == "scale"
                              else self.segment_array(seg, f"{name}_{s}")[:]) for s in SIDE}
        return decode(raw, enc, side["scale"], side["shift"], side["gain"])

    def _concat(self, name: str) -> np.ndarray:
        return np.concatenate([np.asarray(self.segment_array(i, name)[:]) for i in range(len(self.segments))])

    @property
    def n_examples(self) -> int:
        return int(sum(s["n_examples"] for s in self.segments))

    @property
    def n_tokens(self) -> int:
        return int(self._seg_token_start[-1])

    def __len__(self) -> int:
        return self.n_examples

    @cached_property
    def lengths(self) -> np.ndarray:
        lengths = self._concat("length").astype(np.int64)
        if (lengths < 0).any() or int(lengths.sum()) != self.n_tokens:
            raise StoreError(f"store {self.store.path}: split {self.name!r} lengths add up to {int(lengths.sum())} "
                             f"tokens, the manifest says {self.n_tokens}; the store is damaged, run `featstore verify`")
        return lengths

    @cached_property
    def offsets(self) -> np.ndarray:
        """Global token offsets (n_examples + 1) into the split's flat token arrays."""
        out = np.zeros(self.n_examples + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    @cached_property
    def rows(self) -> np.ndarray:
        return self._concat("row")

    @cached_property
    def example_ids(self) -> list[str]:
        ids = []
        for i in range(len(self.segments)):
            raw = np.asarray(self.segment_array(i, "id_bytes")[:]).tobytes()
            off = np.asarray(self.segment_array(i, "id_offsets")[:])
            ids += [raw[off[j]:off[j + 1]].decode() for j in range(len(off) - 1)]
        return ids

    def input_order(self) -> np.ndarray:
        """Storage indices in input-file order."""
        return np.argsort(self.rows, kind="stable")

    def targets(self, column: str) -> np.ndarray:
        self.store._column(column)
        arr = self.store.backend.array(f"labels/{self.name}/{column}")
        if tuple(arr.shape)[:1] != (self.n_examples,) or len(arr.shape) > 2:  # (N,) or multi-label (N, K)
            raise StoreError(f"store {self.store.path}: labels/{self.name}/{column} has shape {tuple(arr.shape)}, "
                             f"the split has {self.n_examples} examples; the store is damaged")
        return np.asarray(arr[:])

    # -- token and span tasks ------------------------------------------------------------------------------
    def token_array(self, name: str) -> np.ndarray:
        """(n_tokens,) per-token alignment in storage order: `word_index`, `char_start` or `char_end`."""
        if name not in ("word_index", "char_start", "char_end"):
            raise StoreError(f"unknown per-token array {name!r}")
        self.store.task_info
        return self._concat(name).astype(np.int64)

    def token_targets(self, column: str = "tags") -> np.ndarray:
        """(n_tokens,) tag ids on each word's first sub-word, -100 on the others (ignored in the loss)."""
        return self._checked("token_labels", column, self.n_tokens).astype(np.int64)

    def gold_tags(self, column: str) -> list[list[str]]:
        """Word-level tags of a tag column added by `featstore add-labels` (storage order)."""
        return [r for r in self._json(f"gold_tags/{self.name}/{column}")]

    def span_targets(self) -> np.ndarray:
        """(n_examples, 2) answer start/end token positions; (0, 0) = no answer in the window."""
        return np.stack([self._checked("spans", k, self.n_examples) for k in ("start", "end")], 1).astype(np.int64)

    def span_windows(self) -> dict[str, np.ndarray] | None:
        """Span stores extracted with `--stride`: per example (a window), `question` (its question's input row),
        `window` (its number within the question) and `answer_in_window` (1: the start/end targets are the
        answer; 0: the no-answer target). None for a store without windows (one example per question)."""
        if not self.store.manifest["settings"].get("stride"):
            return None
        return {k: self._checked("spans", k, self.n_examples).astype(np.int64)
                for k in ("question", "window", "answer_in_window")}

    def gold(self) -> list[dict[str, Any]]:
        """Per example (storage order), what scoring needs: words + tags, or context + gold answer texts."""
        return self._json(f"gold/{self.name}")

    def _json(self, prefix: str) -> list[Any]:
        import json

        raw = self._checked(prefix, "json_bytes", None, full=True).tobytes()
        off = self._checked(prefix, "json_offsets", self.n_examples + 1, full=True).astype(np.int64)
        if off[0] != 0 or (np.diff(off) < 0).any() or off[-1] != len(raw):
            raise StoreError(f"store {self.store.path}: {prefix}/json_offsets do not match its bytes; the "
                             "store is damaged")
        return [json.loads(raw[off[i]:off[i + 1]]) for i in range(self.n_examples)]

    def _checked(self, group: str, name: str, n: int | None, full: bool = False) -> np.ndarray:
        self.store.task_info
        key = f"{group}/{name}" if full else f"{group}/{self.name}/{name}"
        arr = self.store.backend.array(key)
        if n is not None and tuple(arr.shape) != (n,):
            raise StoreError(f"store {self.store.path}: {key} has shape {tuple(arr.shape)}, expected {(n,)}; the "
                             "store is damaged")
        return np.asarray(arr[:])

    def pooled(self, kind: str, layer: int) -> np.ndarray:
        """(n_examples, D) pooled vectors (`cls` or `mean`) of one layer."""
        if kind not in ("cls", "mean"):
            raise StoreError(f"unknown pooling {kind!r}: use cls or mean")
        self.store.check_layers([layer])
        return np.concatenate([self.decoded(i, f"L{layer}/{kind}") for i in range(len(self.segments))])

    def _segment_ranges(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(segment, first, last) row ranges inside each segment that flat token rows [start, stop) cover."""
        out = []
        seg = max(int(np.searchsorted(self._seg_token_start, start, side="right") - 1), 0)
        while start < stop and seg < len(self.segments):
            base = int(self._seg_token_start[seg])
            hi = min(stop, int(self._seg_token_start[seg + 1]))
            if hi > start:
                out.append((seg, start - base, hi - base))
                start = hi
            seg += 1
        return out

    def tokens(self, layer: int, start: int, stop: int) -> np.ndarray:
        """Token features [start, stop) of one layer from the flat split array (may span segments)."""
        parts = [self.decoded(seg, f"L{layer}/tokens", a, b) for seg, a, b in self._segment_ranges(start, stop)]
        if not parts:
            return np.zeros((0, self.store.width), dtype=np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def token_codes(self, layer: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token rows [start, stop) of one layer of an 8-bit store, not decoded: codes (n, D) int8/uint8, row
        scales (n,) float32 and each row's segment (n,) int32 (index into `channel_tables`). A reader that
        decodes elsewhere (heads: on the device) moves a quarter of float32's bytes."""
        if not is_coded(self.store.encoding):
            raise StoreError(f"store {self.store.path} holds {self.store.encoding} values, not 8-bit codes")
        codes, scales, segs = [], [], []
        name = f"L{layer}/tokens"
        for seg, a, b in self._segment_ranges(start, stop):
            codes.append(np.asarray(self.segment_array(seg, name)[a:b]))
            scales.append(np.asarray(self.segment_array(seg, f"{name}_scale")[a:b], dtype=np.float32))
            segs.append(np.full(b - a, seg, dtype=np.int32))
        if not codes:
            dtype = np.int8 if self.store.encoding == "int8" else np.uint8
            return np.zeros((0, self.store.width), dtype), np.zeros(0, np.float32), np.zeros(0, np.int32)
        return tuple(np.concatenate(p) if len(p) > 1 else p[0] for p in (codes, scales, segs))  # type: ignore

    def channel_tables(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-segment channel shift and gain (S, D) float32 of one layer's 8-bit token codes:
        row = codes * scale[row] * gain[seg] + shift[seg]."""
        name = f"L{layer}/tokens"
        return tuple(np.stack([np.asarray(self.segment_array(i, f"{name}_{side}")[:], dtype=np.float32)
                               for i in range(len(self.segments))]) for side in ("shift", "gain"))  # type: ignore

    def example(self, index: int, layers: Sequence[int] | None = None) -> np.ndarray:
        """Token features of one example: (T, L, D) for the chosen layers (default: all stored)."""
        layers = list(layers) if layers is not None else self.store.layers
        self.store.check_layers(layers)
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        return np.stack([self.tokens(k, a, b) for k in layers], axis=1)

    def input_ids(self, index: int) -> np.ndarray:
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        seg = int(np.searchsorted(self._seg_token_start, a, side="right") - 1)
        base = int(self._seg_token_start[seg])
        return np.asarray(self.segment_array(seg, "input_ids")[a - base:b - base])

    # -- PyTorch (torch imported only here) -----------------------------------------------------------------
    def torch_dataset(self, layers: Sequence[int] | None = None, features: str = "tokens", pooling: str = "mean",
                      targets: str | Sequence[str] | None = None, unproject: bool = False) -> Any:
        """A map-style `torch.utils.data.Dataset`: item i = example i (storage order). See featstore.loading."""
        from ..loading.torch_data import StoreDataset

        return StoreDataset(self, layers, features, pooling, targets, unproject)

    def torch_iterable(self, layers: Sequence[int] | None = None, *, features: str = "tokens", pooling: str = "mean",
                       targets: str | Sequence[str] | None = None, batch_tokens: int | None = None,
                       batch_size: int | None = None, shuffle: bool = True, seed: int = 0, rank: int | None = None,
                       world_size: int | None = None, codes: bool = False, unproject: bool = False, **kw: Any) -> Any:
        """An `IterableDataset` of padded batches, each example once per epoch over DataLoader workers and ranks
        (from torch.distributed when initialised). See featstore.loading.torch_data.StoreIterable."""
        from ..loading.torch_data import StoreIterable

        return StoreIterable(self, layers, features, pooling, targets, batch_tokens, batch_size, shuffle, seed, rank,
                             world_size, codes, unproject, **kw)

    def __repr__(self) -> str:
        return f"Split({self.name!r}, examples={self.n_examples}, tokens={self.n_tokens})"
