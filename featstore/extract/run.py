"""`featstore extract`: run a frozen encoder once and write the requested layers into a store.

Three steps, each readable on its own (options and summary: `config.py`; torchrun: `ranks.py`; the
`--project` fit: `projection_fit.py`): `_prepare` (read and check everything, load the model, plan, open or
resume the store: all before any forward pass), `_write_segments` (forward passes feeding the background
writer), `_finalize` (labels, label-name features, statistics, then the complete manifest, last).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from ..device import pick_device
from ..errors import FeatstoreError, InputError, PeerFailed, RankFailed, StoreError
from ..io.hashing import IOOptions, default_io_threads
from ..store import StorageBackend, writable_backend
from ..io.limits import StopFlag, disk_full, is_disk_full, stop_on_sigterm
from ..store.encoding import CODED, bytes_per_token, itemsize
from ..store.manifest import FORMAT_VERSION, complete_manifest, diff_settings, fingerprint
from ..store.projection import array_names as projection_arrays
from ..testhooks import fail_at_segment, pause_point
from .config import ExtractConfig, ExtractSummary
from .featurise import tokenize_split
from .device_side import encode_segment_on_device
from .forward import forward_batch, label_name_features
from .inputs import Dataset
from .models import LoadedModel, config_dict, load_model, part_hashes, resolve_model_layers, tokenizer_hash, \
    truncate_after, weights_hash
from .plan import Segment, Tokenized, assign_shares, plan_batches, plan_segments, storage_order, tokenize
from .projection_fit import fit_projection, load_projection
from .ranks import barrier, distributed, sum_over_ranks
from .sources import load_inputs, resolve_max_length
from .tasks import TaskInfo, gold_records
from .writer import SegmentJob, SegmentWriter

MiB = 1 << 20


@dataclass
class _Prepared:
    """Everything the forward loop needs, checked and planned."""

    cfg: ExtractConfig
    ds: Dataset
    lm: LoadedModel
    layers: list[int]
    toks: dict[str, Tokenized]
    manifest: dict[str, Any]
    backend: StorageBackend
    device: str
    rank: int
    world: int
    segments: list[Segment]
    done: dict[str, dict]
    projection: dict[int, Any] | None = None  # layer -> (mean, basis) on the device
    task: TaskInfo | None = None


def extract(cfg: ExtractConfig) -> ExtractSummary:
    """Extract features of every split into `cfg.out`; resumes a matching interrupted run."""
    t_start = time.perf_counter()
    prep: _Prepared | None = None
    try:
        prep = _prepare(cfg)
        if isinstance(prep, ExtractSummary):
            prep.seconds = time.perf_counter() - t_start
            return prep
        todo, global_tokens = _share(prep)
        t_loop = time.perf_counter()
        with stop_on_sigterm() as stop:
            tokens, bytes_written = _write_segments(prep, todo, global_tokens, stop)
        loop_seconds = time.perf_counter() - t_loop
        barrier(prep.world)
        tokens, bytes_written = sum_over_ranks(prep.world, tokens, bytes_written)
        if prep.rank == 0:  # every rank's segments are committed: rank 0 writes the manifest
            _finalize(prep)
        barrier(prep.world)
        prep.backend.close()
    except Exception as e:  # noqa: BLE001 - under torchrun: one line naming the rank that failed
        err = _out_of_space(cfg, prep, e) if is_disk_full(e) else e
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or isinstance(err, PeerFailed):
            if err is e:
                raise
            raise err from None
        rank = os.environ.get("RANK", "?")
        what = str(err) if isinstance(err, FeatstoreError) else f"{type(err).__name__}: {err}"
        raise RankFailed(f"rank {rank} of {os.environ['WORLD_SIZE']}: {what}; committed segments are kept, "
                         "re-run (with any number of ranks) to resume") from e
    return ExtractSummary(out=cfg.out, fingerprint=prep.manifest["fingerprint"],
                          examples={k: len(s) for k, s in prep.ds.splits.items()}, tokens=tokens,
                          truncated=sum(t.truncated for t in prep.toks.values()), bytes_written=bytes_written,
                          seconds=time.perf_counter() - t_start, segments_total=len(prep.segments),
                          segments_resumed=len(prep.done), device=prep.device, loop_seconds=loop_seconds,
                          rank=prep.rank, task_counts=prep.task.splits if prep.task is not None else None,
                          unseen_labels=_unseen(prep))


def _unseen(prep: _Prepared) -> dict[str, dict[str, dict[str, int]]]:
    """Per label column (`tags` for a token task), the labels absent from the training split, counted per split."""
    out = {c.name: c.unseen for c in prep.ds.label_columns if c.unseen}
    if prep.task is not None and prep.task.unseen:
        out["tags"] = prep.task.unseen
    return out


def _out_of_space(cfg: ExtractConfig, prep: _Prepared | None, e: OSError) -> StoreError:
    """A full disk: how much the segments still to write need, estimated from those committed."""
    if prep is None:
        return disk_full(e, "--out", cfg.out, None, "no segment was committed yet")
    try:
        done = prep.backend.committed_segments()
    except (OSError, StoreError):
        done = {}
    remaining = [s for s in prep.segments if f"{s.split}/{s.name}" not in done]
    todo_tokens = sum(int(prep.toks[s.split].lengths[s.examples].sum()) for s in remaining)
    got_tokens = sum(r["n_tokens"] for r in done.values())
    got_bytes = sum(f["size"] for r in done.values() for f in r["files"].values())
    per_token = got_bytes / got_tokens if got_tokens else bytes_per_token(prep.manifest)
    return disk_full(e, "--out", cfg.out, int(todo_tokens * per_token) or None,
                     f"{len(done)} of {len(prep.segments)} segments are committed and kept")


# -- step 1: check, load, plan, open ----------------------------------------------------------------------

def _prepare(cfg: ExtractConfig) -> _Prepared | ExtractSummary:
    cfg.validate()
    ds, task = load_inputs(cfg)
    backend = writable_backend(cfg.out, cfg.format, cfg.storage_options)
    backend.check_target("--out")
    rank, world = distributed()
    device = pick_device(cfg.device)
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    lm = load_model(cfg.model, device="cpu", dtype="float32")
    layers = resolve_model_layers(cfg.layers, lm.num_layers)
    resolve_max_length(cfg, lm.tokenizer, lm.model.config)
    if cfg.project is not None and cfg.project > lm.hidden_size:
        raise InputError(f"--project {cfg.project} exceeds the model's hidden size {lm.hidden_size}; choose a smaller "
                         f"width (e.g. {lm.hidden_size // 4})")
    if task is not None:  # token/span alignment needs every row's words and offsets: no sliced tokenizing
        toks = {name: tokenize_split(lm.tokenizer, s, task, cfg.max_length, cfg.truncation, cfg.stride)
                for name, s in ds.splits.items()}
    else:
        toks = {name: _tokenize_share(lm, s, cfg, rank, world) for name, s in ds.splits.items()}
    # sized by the host arrays a segment is assembled from (float32 before 8-bit coding): bounded memory
    width = cfg.project or lm.hidden_size
    segment_tokens = max(1, int(cfg.segment_mb * MiB) // (itemsize(cfg.dtype) * width * len(layers)))
    manifest = _build_manifest(cfg, ds, lm, layers, toks, segment_tokens, device, task)
    _announce_size(cfg, ds, task, lm, layers, toks, rank)

    # Every rank runs the same read-only checks (so all fail alike); only rank 0 changes the store, after
    # every rank has looked at it.
    old = backend.read_manifest() if backend.exists() else None
    backend.close()
    if old is not None and not cfg.overwrite:
        if old.get("fingerprint") != manifest["fingerprint"]:
            raise StoreError(f"--out {cfg.out} holds a different store ({', '.join(diff_settings(old, manifest))} "
                             "differ); use another --out, or --overwrite to replace it")
        if old.get("complete"):
            n = len(old.get("segments", []))
            return ExtractSummary(out=cfg.out, fingerprint=old["fingerprint"],
                                  examples={k: v["n_examples"] for k, v in old["dataset"]["splits"].items()},
                                  tokens=0, truncated=0, bytes_written=0, seconds=0.0, segments_total=n,
                                  segments_resumed=n, device=device, already_complete=True, rank=rank)
        manifest["layout"] = old["layout"]  # resume with the recorded segmentation
        segment_tokens = old["layout"]["segment_tokens"]
    # a resumed run keeps the checksum the store was started with
    backend.io = IOOptions(cfg.io_threads or default_io_threads(), manifest["layout"].get("hash", "sha256"))
    barrier(world)
    if rank == 0:
        if old is not None and cfg.overwrite:
            backend.remove()
        backend.create()
        if old is not None and not cfg.overwrite:
            manifest["files"] = old.get("files", {})  # a projection fitted by the interrupted run
            if "projection" in old:
                manifest["projection"] = old["projection"]
        backend.write_manifest(manifest)  # complete: false; readers refuse it, a re-run resumes it
        backend.discard_partial_segments()  # left by a killed run
    _to_device(lm, layers, device, manifest)
    projection = None
    if cfg.project:
        if rank == 0 and not all(n in manifest.get("files", {}) for k in layers for n in projection_arrays(k)):
            fit_projection(cfg, ds, lm, toks, layers, device, backend, manifest)
        barrier(world)
        projection = load_projection(backend, layers, device)
    barrier(world)
    segments = [seg for name in ds.splits for seg in plan_segments(name, toks[name].lengths, segment_tokens)]
    done = backend.committed_segments()
    barrier(world)  # every rank has listed the same committed segments before any rank commits more
    return _Prepared(cfg, ds, lm, layers, toks, manifest, backend, device, rank, world, segments, done, projection,
                     task)


def _announce_size(cfg: ExtractConfig, ds: Dataset, task: TaskInfo | None, lm: LoadedModel, layers: list[int],
                   toks: dict[str, Tokenized], rank: int) -> None:
    """The store's estimated size on stderr (with the progress bar), and the free-space check, before any write."""
    from .estimate import Layout, check_space, size

    if not (cfg.space_check or cfg.progress):
        return
    lay = Layout(len(layers), cfg.project or lm.hidden_size, lm.hidden_size, cfg.encoding, bool(cfg.project), cfg.task)
    est = size(lay, cfg, ds, task, {k: int(t.lengths.sum()) for k, t in toks.items()},
               {k: t.lengths for k, t in toks.items()})
    space = check_space(cfg.out, est.total_bytes, cfg.free_space) if cfg.space_check else None
    if cfg.progress and rank == 0:
        from ..io.files import format_bytes

        free = f"; {format_bytes(space[1])} free there" if space else ""
        print(f"estimate: {est.total_tokens:,} tokens x {est.bytes_per_token:,} bytes = "
              f"{format_bytes(est.total_bytes)} for {cfg.out}{free}", file=sys.stderr, flush=True)


def _tokenize_share(lm: LoadedModel, split: Any, cfg: ExtractConfig, rank: int, world: int) -> Tokenized:
    """One process: every row. Under torchrun: rank R tokenizes the R-th slice of the rows and the ranks sum
    their lengths and truncation counts (a tensor all-reduce), so every rank plans from every length while
    tokenizing only 1/world of them; `_share` then tokenizes the rows of the rank's own segments."""
    if world <= 1:
        return tokenize(lm.tokenizer, split, cfg.max_length, cfg.truncation)
    n = len(split)
    tok = tokenize(lm.tokenizer, split, cfg.max_length, cfg.truncation,
                   rows=np.arange(n * rank // world, n * (rank + 1) // world))
    summed = sum_over_ranks(world, *tok.lengths.tolist(), tok.truncated)
    tok.lengths, tok.truncated = np.asarray(summed[:-1], dtype=np.int64), summed[-1]
    return tok


def _share(prep: _Prepared) -> tuple[list[Segment], int]:
    """This rank's uncommitted segments, balanced by tokens over the ranks (the same answer on every rank),
    and the tokens left to do over all ranks."""
    todo = [s for s in prep.segments if f"{s.split}/{s.name}" not in prep.done]
    costs = [int(prep.toks[s.split].lengths[s.examples].sum()) for s in todo]
    owners = assign_shares(costs, prep.world)
    mine = [s for s, r in zip(todo, owners) if r == prep.rank]
    for name, tok in prep.toks.items():  # under torchrun: the rows of this rank's segments not tokenized yet
        rows = [int(i) for s in mine if s.split == name for i in s.examples if tok.input_ids[i] is None]
        if rows:
            tokenize(prep.lm.tokenizer, prep.ds.splits[name], prep.cfg.max_length, prep.cfg.truncation,
                     rows=np.asarray(rows), into=tok)
    return mine, sum(costs)


def _to_device(lm: LoadedModel, layers: list[int], device: str, manifest: dict) -> None:
    import torch

    truncate_after(lm.model, max(layers))
    lm.model.to(device=device, dtype=getattr(torch, manifest["runtime"]["compute_dtype"]))


def _build_manifest(cfg: ExtractConfig, ds: Dataset, lm: LoadedModel, layers: list[int],
                    toks: dict[str, Tokenized], segment_tokens: int, device: str,
                    task: TaskInfo | None = None) -> dict:
    compute_dtype = cfg.compute_dtype if cfg.compute_dtype != "auto" else (
        "bfloat16" if device.startswith("cuda") else "float32")
    model = {"name": cfg.model, "path": lm.path, "revision": getattr(lm.model.config, "_commit_hash", None),
             "config": config_dict(lm.model), "weights_sha256": weights_hash(lm.model),
             "part_sha256": part_hashes(lm.model.state_dict()),
             "num_layers": lm.num_layers, "hidden_size": lm.hidden_size, "num_parameters": lm.num_parameters,
             "architecture": type(lm.model).__name__}
    tokenizer = {"name": lm.path, "sha256": tokenizer_hash(lm.tokenizer), "class": type(lm.tokenizer).__name__}
    settings = {"layers": layers, "max_length": cfg.max_length, "truncation": cfg.truncation,
                "pooling": ["cls", "mean"], "dtype": cfg.dtype}
    if cfg.encoding != cfg.dtype:  # float stores keep the manifest they always had
        settings["encoding"] = cfg.encoding
    if cfg.project:
        settings["project"] = cfg.project
    if task is not None:  # sentence stores keep the manifest (and fingerprint) they always had
        settings["task"] = task.kind
    if cfg.stride:  # windows change the features; stores without them keep their fingerprint
        settings["stride"] = cfg.stride
    splits = {name: {"source": os.path.abspath(s.source), "sha256": s.content_hash(), "n_examples": len(s),
                     "n_tokens": int(toks[name].lengths.sum()), "truncated": toks[name].truncated}
              for name, s in ds.splits.items()}
    fp = fingerprint(model, tokenizer, settings, {k: v["sha256"] for k, v in splits.items()})
    dataset = {"text_column": ds.text_column, "pair_column": ds.pair_column, "id_column": ds.id_column,
               "splits": splits, "label_columns": [c.to_json() for c in ds.label_columns]}
    if task is not None:
        dataset["task"] = task.to_json()
    return {
        "format_version": FORMAT_VERSION, "tool": {"name": "featstore", "version": __version__},
        "format": cfg.format, "fingerprint": fp, "complete": False, "model": model, "tokenizer": tokenizer,
        "settings": settings,
        "layout": {"segment_tokens": segment_tokens, "chunk_bytes": int(cfg.chunk_mb * MiB),
                   "compression": cfg.compression, "hash": cfg.hash},
        "runtime": {"device": device, "compute_dtype": compute_dtype, "batch_tokens": cfg.batch_tokens},
        "dataset": dataset,
    }


# -- step 2: forward passes into the background writer -----------------------------------------------------

def _write_segments(prep: _Prepared, todo: list[Segment], global_tokens: int, stop: StopFlag) -> tuple[int, int]:
    """Forward every planned segment of this rank; returns (tokens, bytes written).

    One progress bar, on rank 0, over the tokens of every rank: it advances by rank 0's tokens scaled by
    (all tokens / rank 0's tokens). Shares are balanced by tokens, so that estimate of the global rate holds
    without any communication inside the loop (ranks do unequal numbers of batches, so they cannot meet there).
    """
    cfg, lm, toks = prep.cfg, prep.lm, prep.toks
    lay = prep.manifest["layout"]
    total_tokens = sum(int(toks[s.split].lengths[s.examples].sum()) for s in todo)
    scale = global_tokens / total_tokens if total_tokens else 1.0
    desc = "extract" if prep.world == 1 else f"extract ({prep.world} ranks, est. from rank 0)"
    on_device = encode_on_device(cfg, prep.device)
    with _progress(global_tokens, cfg.progress and prep.rank == 0, desc) as bar, \
            SegmentWriter(prep.backend, lay["compression"], lay["chunk_bytes"], rank=prep.rank) as writer:
        for n, seg in enumerate(todo):
            fail_at_segment(prep.rank, n, writer.committed)
            plan_batches(seg, toks[seg.split].lengths, cfg.batch_tokens)
            job = SegmentJob(seg.split, seg.name, seg.index, prep.layers, cfg.dtype, encoding=cfg.encoding)
            for rows in seg.batches:
                pause_point("batch")  # SIGTERM tests signal the run here
                stop.check("committed segments are kept")  # SIGTERM: stop here; the writer ends its segment
                job.batches.append(forward_batch(lm, toks[seg.split], prep.ds.splits[seg.split], rows, prep.layers,
                                                 cfg.dtype, prep.device, job.stats, prep.projection,
                                                 "device" if on_device else "copying"))
                bar.update(int(toks[seg.split].lengths[rows].sum()) * scale)
            if on_device:
                job.encoded = encode_segment_on_device(job.batches, prep.layers, cfg.encoding)
            writer.put(job)
    return total_tokens, writer.bytes_written


def encode_on_device(cfg: ExtractConfig, device: str) -> bool:
    """8-bit codes are computed where the features are when that is a GPU (a quarter of the bytes cross to the
    host), else on the writer thread, overlapping the next forward passes."""
    if cfg.encoding not in CODED:
        return False
    return cfg.encode_on == "device" or (cfg.encode_on == "auto" and device.startswith("cuda"))


def _progress(total: int, enabled: bool, desc: str = "extract"):
    from ..io.progress import progress_bar

    return progress_bar(enabled, total=total, unit="tok", unit_scale=True, desc=desc, smoothing=0.1)


# -- step 3: labels, label-name features, statistics, manifest last ---------------------------------------

def _finalize(prep: _Prepared) -> None:
    manifest, backend = prep.manifest, prep.backend
    arrays: dict[str, np.ndarray] = {}
    for name, split in prep.ds.splits.items():
        rows = storage_order(prep.toks[name].lengths)  # segments are consecutive slices of it
        for col, target in split.targets.items():
            arrays[f"labels/{name}/{col}"] = target[rows]
        if prep.task is not None:
            arrays.update(task_arrays(name, split, prep.task, rows))
    label_names = {c.name: c.names for c in prep.ds.label_columns if c.names}  # class and multilabel columns
    arrays.update(label_name_features(prep.lm, label_names, prep.layers, prep.device, prep.projection))
    projection_files = {n: f for n, f in manifest.get("files", {}).items() if n.startswith("projection/")}
    manifest["files"] = {**projection_files,
                         **(backend.write_arrays(arrays, manifest["layout"]["chunk_bytes"]) if arrays else {})}
    backend.finalize(complete_manifest(manifest, list(backend.committed_segments().values()), prep.layers,
                                       list(label_names)))
    backend.close()


def task_arrays(name: str, split, task: TaskInfo, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Targets and gold records of a token/span split, in storage order: per-token tag ids (-100 off first
    sub-words) or per-example answer start/end tokens, and each example's gold record as JSON bytes."""
    targets = split.extra["targets"]
    out = {}
    if task.kind == "token":
        out[f"token_labels/{name}/tags"] = np.concatenate([targets[r] for r in rows]).astype(np.int32)
    else:
        pos = np.stack([targets[r] for r in rows]).astype(np.int32)  # (N, 2)
        out[f"spans/{name}/start"], out[f"spans/{name}/end"] = pos[:, 0].copy(), pos[:, 1].copy()
        for key in ("question", "window", "answer_in_window"):  # windows (--stride): per window, its question
            if key in split.extra:
                out[f"spans/{name}/{key}"] = split.extra[key][rows].astype(np.int32)
    recs = gold_records(split, task)
    blobs = [json.dumps(recs[r], ensure_ascii=False).encode() for r in rows]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    out[f"gold/{name}/json_bytes"] = np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()
    out[f"gold/{name}/json_offsets"] = offsets
    return out


