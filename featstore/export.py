"""`featstore export`: a split's pooled vectors, ids, input rows and labels as Parquet or Arrow files that HF
`datasets`, pandas and polars open directly, with the store's fingerprint in each file's metadata.

One file per split, `<split>.parquet` / `<split>.arrow`, so `datasets.load_dataset("parquet", data_dir=DIR)`
names the splits itself. Rows are in storage order, written one segment at a time (memory: one segment's
pooled vectors); the `row` column gives each example's row in the input file. Each file is written beside its
target and renamed into place, so a file that exists is whole.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .store import Split, Store, open_store

FORMATS = ("parquet", "arrow")
POOLINGS = ("mean", "cls")
METADATA_KEY = b"featstore"


@dataclass(kw_only=True)
class ExportResult:
    out: str
    files: list[str]
    examples: dict[str, int]
    layers: list[int]
    fingerprint: str
    bytes_written: int
    seconds: float


def resolve_layers(spec: str | Sequence[int] | None, stored: list[int]) -> list[int]:
    """`all`, or comma-separated layers: stored indices, or negative positions among the stored layers
    (-1 = the top stored layer)."""
    if spec is None or spec == "all":
        return list(stored)
    try:
        items = [int(x) for x in spec.split(",") if x.strip()] if isinstance(spec, str) else [int(x) for x in spec]
    except ValueError:
        raise InputError(f"--layers {spec!r}: use comma-separated layer numbers (-1 = the top stored layer) or all")
    out = []
    for k in items:
        if k < 0 and -k <= len(stored):
            k = stored[k]
        if k not in stored:
            raise InputError(f"--layers {spec!r}: the store holds layers {stored} (negative numbers count from the "
                             "top stored layer)")
        if k not in out:
            out.append(k)
    if not out:
        raise InputError("--layers is empty: give at least one layer")
    return out


def export(store: str, out: str, splits: Sequence[str] | None = None, layers: str | Sequence[int] | None = "-1",
           pooling: str = "mean", fmt: str = "parquet", overwrite: bool = False,
           storage_options: dict[str, Any] | None = None, cache_dir: str | None = None) -> ExportResult:
    """Write pooled vectors of `layers` for `splits` (default: every split) of `store` under the directory `out`."""
    t0 = time.perf_counter()
    problems = []
    if fmt not in FORMATS:
        problems.append(f"--format {fmt!r}: use parquet or arrow")
    if pooling not in POOLINGS:
        problems.append(f"--pooling {pooling!r}: use mean or cls")
    if os.path.exists(out) and not os.path.isdir(out):
        problems.append(f"{out} is a file; give a directory for the exported files")
    if problems:
        raise InputError("; ".join(problems))
    s = open_store(store, storage_options=storage_options, cache_dir=cache_dir)
    keep = resolve_layers(layers, s.layers)
    names = list(splits) if splits else s.splits
    for name in names:
        s.split(name)  # an unknown split fails here, before anything is written
    targets = [os.path.join(out, f"{name}.{fmt}") for name in names]
    there = [t for t in targets if os.path.exists(t)]
    if there and not overwrite:
        raise InputError(f"{there[0]} exists; pass --overwrite to replace it, or export to another directory")
    os.makedirs(out, exist_ok=True)
    written = 0
    for name, target in zip(names, targets):
        _write(s, s.split(name), keep, pooling, fmt, target)
        written += os.path.getsize(target)
    return ExportResult(out=out, files=targets, examples={n: len(s.split(n)) for n in names}, layers=keep,
                        fingerprint=s.fingerprint, bytes_written=written, seconds=time.perf_counter() - t0)


def schema_metadata(s: Store, split: str, layers: list[int], pooling: str) -> dict[bytes, bytes]:
    """What a reader of the file needs to trust it and to map it back: fingerprint, model, layers, labels."""
    info = {"fingerprint": s.fingerprint, "store": s.path, "split": split, "layers": layers, "pooling": pooling,
            "model": s.manifest["model"].get("name"), "encoding": s.encoding, "width": s.width,
            "label_names": {c: s.label_names(c) for c in s.label_columns}}
    return {METADATA_KEY: json.dumps(info).encode()}


def _write(s: Store, sp: Split, layers: list[int], pooling: str, fmt: str, target: str) -> None:
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    first = np.concatenate([[0], np.cumsum([seg["n_examples"] for seg in sp.segments])])
    ids, rows = sp.example_ids, sp.rows
    labels = {c: sp.targets(c) for c in s.label_columns}
    fields = [("id", pa.string()), ("row", pa.int64())]
    for c, y in labels.items():
        fields.append((c, pa.from_numpy_dtype(y.dtype)))
        if s.label_names(c) is not None:
            fields.append((f"{c}_name", pa.string()))
    fields += [(f"L{k}", pa.list_(pa.float32(), s.width)) for k in layers]
    schema = pa.schema(fields, metadata=schema_metadata(s, sp.name, layers, pooling))
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.partial")
    writer = pq.ParquetWriter(tmp, schema) if fmt == "parquet" else ipc.new_file(tmp, schema)
    try:
        for i in range(len(sp.segments)):
            a, b = int(first[i]), int(first[i + 1])
            cols: list[Any] = [pa.array(ids[a:b], pa.string()), pa.array(rows[a:b].astype(np.int64))]
            for c, y in labels.items():
                cols.append(pa.array(y[a:b]))
                names = s.label_names(c)
                if names is not None:
                    cols.append(pa.array([names[int(j)] for j in y[a:b]], pa.string()))
            for k in layers:
                v = np.ascontiguousarray(sp.decoded(i, f"L{k}/{pooling}"), dtype=np.float32)  # (n, D)
                cols.append(pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), s.width))
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))
    except BaseException:
        writer.close()
        os.remove(tmp)
        raise
    writer.close()
    os.replace(tmp, target)
