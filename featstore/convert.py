"""`featstore convert`: re-encode or subset an existing store (local or URL) into a new local store, without
the backbone, one segment at a time (memory bounded by one segment's float32 features), resumable like
extraction (committed segments are skipped on a re-run).

The new store has its own fingerprint, the hash of the source's fingerprint and the transform, and its
manifest records `derived_from` = {fingerprint, url, transform}: a converted store never claims to be an
extraction with those settings (its values went through the source's rounding first).
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import __version__
from .errors import InputError, StoreError
from .store import DEFAULT_FORMAT, FORMATS, Store, local_backend, open_store
from .io.limits import disk_full, is_disk_full, stop_on_sigterm
from .store.encoding import CODED, ENCODINGS, bytes_per_token, cast_float, storable
from .store.manifest import FORMAT_VERSION, complete_manifest, diff_settings
from .store.projection import array_names as projection_arrays, fit_pca, project as project_rows, sample_rows
from .testhooks import pause_point

ROW_ARRAYS = ("offsets", "length", "row", "id_bytes", "id_offsets", "input_ids")  # copied as they are


@dataclass(kw_only=True)
class ConvertResult:
    out: str
    fingerprint: str
    segments_total: int
    segments_resumed: int
    bytes_written: int
    seconds: float
    already_complete: bool = False


def parse_layers(spec: str | None, stored: list[int]) -> list[int]:
    """`all` / None = every stored layer; else comma-separated stored layer indices."""
    if spec is None or spec.strip() == "all":
        return list(stored)
    try:
        items = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise InputError(f"bad --layers {spec!r}: use comma-separated layer indices from the source, or 'all'")
    missing = [k for k in items if k not in stored]
    if not items or missing:
        raise InputError(f"--layers {spec!r}: the source holds layers {stored}; choose from those")
    return items


def derived_fingerprint(source_fp: str, transform: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"source": source_fp, "transform": transform}, sort_keys=True).encode()).hexdigest()


def convert(src: str, dst: str, encoding: str | None = None, layers: str | None = None, fmt: str | None = None,
            overwrite: bool = False, storage_options: dict[str, Any] | None = None,
            cache_dir: str | None = None, project: int | None = None) -> ConvertResult:
    """Write `dst` holding `src`'s features at `encoding`, for the chosen stored `layers`, projected to
    `project` principal directions per layer when given (PCA fitted on a sample of the training split).
    `encoding` None keeps the source's (to subset layers or project only)."""
    t0 = time.perf_counter()
    if encoding is not None and encoding not in ENCODINGS:
        raise InputError(f"--encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
    if project is not None and project < 1:
        raise InputError(f"--project {project}: give a positive width (e.g. a quarter of the hidden size)")
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: use {' or '.join(FORMATS)}")
    if "://" in dst:
        raise InputError(f"DST {dst}: convert writes a local store; `featstore push` it afterwards")
    source = open_store(src, storage_options=storage_options, cache_dir=cache_dir)
    try:
        encoding = encoding or source.encoding
        keep = parse_layers(layers, source.layers)
        if project is not None and source.width != source.hidden_size:
            raise InputError(f"SRC {src} is already projected (to {source.width}); convert from the unprojected "
                             "store")
        if project is not None and project > source.hidden_size:
            raise InputError(f"--project {project} exceeds the hidden size {source.hidden_size}; choose a smaller "
                             f"width (e.g. {source.hidden_size // 4})")
        manifest = _manifest(source, src, encoding, keep, fmt or source.manifest.get("format", DEFAULT_FORMAT), project)
        backend = local_backend(dst, manifest["format"])
        backend.check_target("DST")
        old = backend.read_manifest() if backend.exists() else None
        if old is not None and not overwrite:
            if old.get("fingerprint") != manifest["fingerprint"]:
                raise StoreError(f"DST {dst} holds a different store ({', '.join(diff_settings(old, manifest))} "
                                 "differ); use another DST, or --overwrite to replace it")
            if old.get("complete"):
                n = len(old.get("segments", []))
                return ConvertResult(out=dst, fingerprint=old["fingerprint"], segments_total=n, segments_resumed=n,
                                     bytes_written=0, seconds=time.perf_counter() - t0, already_complete=True)
        if old is not None and overwrite:
            backend.remove()
        backend.create()
        backend.write_manifest(manifest)  # complete: false; a re-run resumes it
        backend.discard_partial_segments()
        done = backend.committed_segments()
        # a deterministic fit on the same sample: a resumed convert projects with the same basis
        projection = _fit(source, keep, project) if project else None
        written, total = 0, 0
        try:
            with stop_on_sigterm() as stop:
                for split in source.splits:
                    sp = source.split(split)
                    for i, seg in enumerate(sp.segments):
                        total += 1
                        if f"{split}/{seg['name']}" in done:
                            continue
                        stop.check("committed segments are kept")
                        written += _convert_segment(backend, sp, i, keep, encoding, manifest, projection)
            _finalize(source, backend, manifest, keep, projection)
        except OSError as e:
            if not is_disk_full(e):
                raise
            raise _out_of_space(e, dst, source, backend, manifest) from None
        return ConvertResult(out=dst, fingerprint=manifest["fingerprint"], segments_total=total,
                             segments_resumed=len(done), bytes_written=written, seconds=time.perf_counter() - t0)
    finally:
        source.close()


def _convert_segment(backend, sp, i: int, keep: list[int], encoding: str, manifest: dict[str, Any],
                     projection: dict[int, tuple[np.ndarray, np.ndarray]] | None) -> int:
    """Write and commit segment `i` of split `sp` converted; returns the bytes written."""
    seg = sp.segments[i]
    arrays, stats = _segment(sp, i, keep, encoding, manifest["settings"]["dtype"], projection)
    pending = backend.write_segment(sp.name, seg["name"], arrays, "none", manifest["layout"]["chunk_bytes"])
    record = backend.commit_segment(pending, {
        "split": sp.name, "name": seg["name"], "index": seg["index"], "n_examples": seg["n_examples"],
        "n_tokens": seg["n_tokens"], "stats": stats})
    pause_point("segment-committed")  # disk-full and crash tests act here
    return sum(f["size"] for f in record["files"].values())


def _out_of_space(e: OSError, dst: str, source: Store, backend, manifest: dict[str, Any]) -> StoreError:
    """A full disk: the room the segments still to convert need, estimated from those committed."""
    try:
        done = backend.committed_segments()
    except (OSError, StoreError):
        done = {}
    segs = [s for name in source.splits for s in source.split(name).segments]
    todo_tokens = sum(s["n_tokens"] for s in segs if f"{s['split']}/{s['name']}" not in done)
    got_tokens = sum(r["n_tokens"] for r in done.values())
    got_bytes = sum(f["size"] for r in done.values() for f in r["files"].values())
    per_token = got_bytes / got_tokens if got_tokens else bytes_per_token(manifest)
    return disk_full(e, "DST", dst, int(todo_tokens * per_token) or None,
                     f"{len(done)} of {len(segs)} segments are committed and kept")


def _manifest(source: Store, src: str, encoding: str, keep: list[int], fmt: str,
              project: int | None) -> dict[str, Any]:
    m = source.manifest
    transform: dict[str, Any] = {"encoding": encoding, "layers": keep}
    settings = {**copy.deepcopy(m["settings"]), "layers": keep,
                "dtype": "float32" if encoding in CODED else encoding}
    settings.pop("encoding", None)
    if encoding in CODED:
        settings["encoding"] = encoding
    if project:
        settings["project"] = transform["project"] = project
    return {
        "format_version": FORMAT_VERSION, "tool": {"name": "featstore", "version": __version__}, "format": fmt,
        "fingerprint": derived_fingerprint(m["fingerprint"], transform), "complete": False,
        "model": copy.deepcopy(m["model"]), "tokenizer": copy.deepcopy(m["tokenizer"]), "settings": settings,
        "layout": {"segment_tokens": m["layout"]["segment_tokens"], "chunk_bytes": m["layout"]["chunk_bytes"],
                   "compression": "none"},
        "runtime": copy.deepcopy(m.get("runtime", {})),
        "dataset": copy.deepcopy(m["dataset"]),
        "derived_from": {"fingerprint": m["fingerprint"], "url": src, "transform": transform},
    }


def _fit(source: Store, keep: list[int], width: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """PCA per kept layer on the training split's sample of examples (the same rule extraction uses), read one
    segment at a time."""
    name = "train" if "train" in source.splits else source.splits[0]
    sp = source.split(name)
    order = sp.input_order()  # input position -> storage index
    picked = np.zeros(len(sp), dtype=bool)
    picked[order[sample_rows(sp.lengths[order])]] = True
    starts = np.concatenate([[0], np.cumsum([s["n_examples"] for s in sp.segments])])
    out = {}
    for k in keep:
        rows = []
        for i in range(len(sp.segments)):
            local = np.flatnonzero(picked[starts[i]:starts[i + 1]])
            if not len(local):
                continue
            x = sp.decoded(i, f"L{k}/tokens")  # (T_seg, D)
            off = np.asarray(sp.segment_array(i, "offsets")[:])
            rows += [x[off[j]:off[j + 1]] for j in local]
        out[k] = fit_pca(np.concatenate(rows), width)
    return out


def _segment(sp, i: int, keep: list[int], encoding: str, dtype: str,
             projection: dict[int, tuple[np.ndarray, np.ndarray]] | None) -> tuple[dict[str, np.ndarray], dict]:
    """One source segment -> the new segment's arrays (features decoded to float32, projected, re-encoded) and
    stats."""
    arrays = {name: np.asarray(sp.segment_array(i, name)[:]) for name in ROW_ARRAYS}
    stats = {}
    for k in keep:
        for kind in ("tokens", "cls", "mean"):
            x = np.asarray(sp.decoded(i, f"L{k}/{kind}"), dtype=np.float32)  # (R, D)
            if projection is not None:
                x = project_rows(x, *projection[k])  # (R, N)
            if kind == "tokens":
                x64 = x.astype(np.float64)
                stats[str(k)] = [float(x64.sum()), float((x64 * x64).sum()), int(x.size)]
            host = x if encoding in CODED else cast_float(x, dtype)
            for suffix, a in storable(host, encoding).items():
                arrays[f"L{k}/{kind}{suffix}"] = a
    return arrays, stats


def _finalize(source: Store, backend, manifest: dict[str, Any], keep: list[int],
              projection: dict[int, tuple[np.ndarray, np.ndarray]] | None) -> None:
    """Labels and label-name features copied, statistics of the new values, then the complete manifest."""
    arrays: dict[str, np.ndarray] = {}
    for split in source.splits:
        for col in source.label_columns:
            arrays[f"labels/{split}/{col}"] = source.split(split).targets(col)
    label_features = list(source.manifest.get("label_features", []))
    for col in label_features:
        for k in keep:
            f = source.label_features(col, k)
            arrays[f"label_features/{col}/L{k}"] = f if projection is None else project_rows(f, *projection[k])
    for k, (mean, basis) in (projection or {}).items():
        arrays.update(zip(projection_arrays(k), (mean, basis)))
    manifest["files"] = backend.write_arrays(arrays, manifest["layout"]["chunk_bytes"]) if arrays else {}
    backend.finalize(complete_manifest(manifest, list(backend.committed_segments().values()), keep,
                                       label_features))
    backend.close()
