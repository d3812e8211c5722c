"""`featstore extract`: run a frozen encoder once and write the requested layers into a store.

Three steps, each readable on its own: `_prepare` (read and check everything, load the model, plan, open or
resume the store: all before any forward pass), `_write_segments` (forward passes feeding the background
writer), `_finalize` (labels, label-name features, statistics, then the complete manifest, last).
"""
from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from ..device import pick_device
from ..errors import FeatstoreError, InputError, PeerFailed, RankFailed, StoreError
from ..store import FORMATS, StorageBackend, compressions, writable_backend
from ..store.encoding import CODED, DTYPES, ENCODINGS, itemsize
from ..store.manifest import FORMAT_VERSION, complete_manifest, diff_settings, fingerprint
from ..store.projection import array_names as projection_arrays, fit_pca, sample_rows
from .forward import forward_batch, label_name_features
from .inputs import Dataset, load_dataset
from .models import LoadedModel, config_dict, load_model, part_hashes, resolve_model_layers, tokenizer_hash, \
    truncate_after, weights_hash
from .plan import Segment, Tokenized, assign_shares, plan_batches, plan_segments, storage_order, tokenize
from .tasks import TASKS, TaskInfo, gold_records, load_span_dataset, load_token_dataset, tokenize_task
from .writer import SegmentJob, SegmentWriter

MiB = 1 << 20


@dataclass
class ExtractConfig:
    """Everything `featstore extract` takes; validated before any expensive work."""

    model: str
    data: dict[str, str]
    out: str
    text_column: str = "text"
    pair_column: str | None = None
    label_columns: list[str] = field(default_factory=list)
    id_column: str | None = None
    layers: str = "-1"
    max_length: int | None = None  # default: the model's limit, at most 512
    truncation: str = "longest_first"
    dtype: str | None = None  # default float16; a float encoding and this are one setting
    encoding: str | None = None  # default: the dtype; int8 / fp8 store 8-bit codes decoded to float32
    project: int | None = None  # keep N principal directions per layer (PCA fitted on a sample of train)
    format: str = "zarr"
    compression: str = "none"
    batch_tokens: int = 16384
    segment_mb: float = 256
    chunk_mb: float = 4.0
    device: str = "auto"
    compute_dtype: str = "auto"
    overwrite: bool = False
    allow_empty_text: bool = False
    progress: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options when `out` is a URL
    task: str = "sentence"  # sentence | token (NER, POS) | span (extractive QA)
    tokens_column: str = "tokens"  # token tasks from JSONL/Parquet: list columns
    tags_column: str = "tags"
    tag_scheme: str = "auto"  # auto | IOB2 | IOBES | none
    repair_tags: bool = False  # start entities whose I- has no B- instead of refusing the data
    repair_answers: bool = False  # move answers not at their offsets to the nearest occurrence of their text

    def validate(self) -> None:
        """Every problem at once, as one line."""
        problems = []
        if self.dtype is not None and self.dtype not in DTYPES:
            problems.append(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        elif self.encoding is not None and self.encoding not in ENCODINGS:
            problems.append(f"--encoding {self.encoding!r}: use one of {', '.join(ENCODINGS)}")
        elif self.encoding in CODED and self.dtype not in (None, "float32"):
            problems.append(f"--dtype {self.dtype} with --encoding {self.encoding}: 8-bit codes are computed from "
                            "float32 and decode to float32; drop --dtype")
        elif self.encoding in DTYPES and self.dtype not in (None, self.encoding):
            problems.append(f"--dtype {self.dtype} contradicts --encoding {self.encoding}; give one of them")
        else:  # resolved: `dtype` is what forward passes hand over and readers return
            self.encoding = self.encoding or self.dtype or "float16"
            self.dtype = "float32" if self.encoding in CODED else self.encoding
        if self.format not in FORMATS:
            problems.append(f"--format {self.format!r}: use {' or '.join(FORMATS)}")
        if self.max_length is not None and self.max_length < 2:
            problems.append("--max-length must be at least 2")
        if self.project is not None and self.project < 1:
            problems.append(f"--project {self.project}: give a positive width (e.g. a quarter of the hidden size)")
        if self.batch_tokens < 1:
            problems.append("--batch-tokens must be positive")
        if self.segment_mb <= 0 or self.chunk_mb <= 0:
            problems.append("--segment-mb and --chunk-mb must be positive")
        if self.truncation not in ("longest_first", "only_first", "only_second"):
            problems.append(f"--truncation {self.truncation!r}: use longest_first, only_first or only_second")
        if self.compute_dtype not in ("auto",) + DTYPES:
            problems.append(f"--compute-dtype {self.compute_dtype!r}: use auto or one of {', '.join(DTYPES)}")
        codecs = compressions(self.format)
        if codecs and self.compression not in codecs:
            problems.append(f"--compression {self.compression!r} for {self.format}: use one of {', '.join(codecs)}")
        if self.task not in TASKS:
            problems.append(f"--task {self.task!r}: use one of {', '.join(TASKS)}")
        elif self.task != "sentence" and self.label_columns:
            problems.append(f"--label-column applies to sentence tasks; a {self.task} task's targets come from the "
                            "data (tags, answers)")
        if self.task == "span" and self.truncation == "longest_first":
            self.truncation = "only_second"  # never cut the question: only the context
        if "://" in self.out and self.format != "zarr":
            problems.append(f"--out {self.out}: a URL takes --format zarr (write HDF5 locally, then `featstore push`)")
        if problems:
            raise InputError("; ".join(problems))


@dataclass(kw_only=True)
class ExtractSummary:
    out: str
    fingerprint: str
    examples: dict[str, int]
    tokens: int
    truncated: int
    bytes_written: int
    seconds: float
    segments_total: int
    segments_resumed: int
    device: str
    already_complete: bool = False
    loop_seconds: float = 0.0  # forward passes + writing, without model loading and hashing
    rank: int = 0  # under torchrun: this process's rank (tokens and bytes are summed over every rank)
    task_counts: dict[str, dict[str, int]] | None = None  # token/span: words / answers lost to truncation per split

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


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
    try:
        prep = _prepare(cfg)
        if isinstance(prep, ExtractSummary):
            prep.seconds = time.perf_counter() - t_start
            return prep
        todo, global_tokens = _share(prep)
        t_loop = time.perf_counter()
        tokens, bytes_written = _write_segments(prep, todo, global_tokens)
        loop_seconds = time.perf_counter() - t_loop
        _barrier(prep.world)
        tokens, bytes_written = _sum_over_ranks(prep.world, tokens, bytes_written)
        if prep.rank == 0:  # every rank's segments are committed: rank 0 writes the manifest
            _finalize(prep)
        _barrier(prep.world)
        prep.backend.close()
    except Exception as e:  # noqa: BLE001 - under torchrun: one line naming the rank that failed
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or isinstance(e, PeerFailed):
            raise
        rank = os.environ.get("RANK", "?")
        what = str(e) if isinstance(e, FeatstoreError) else f"{type(e).__name__}: {e}"
        raise RankFailed(f"rank {rank} of {os.environ['WORLD_SIZE']}: {what}; committed segments are kept, "
                         "re-run (with any number of ranks) to resume") from e
    return ExtractSummary(out=cfg.out, fingerprint=prep.manifest["fingerprint"],
                          examples={k: len(s) for k, s in prep.ds.splits.items()}, tokens=tokens,
                          truncated=sum(t.truncated for t in prep.toks.values()), bytes_written=bytes_written,
                          seconds=time.perf_counter() - t_start, segments_total=len(prep.segments),
                          segments_resumed=len(prep.done), device=prep.device, loop_seconds=loop_seconds,
                          rank=prep.rank, task_counts=prep.task.splits if prep.task is not None else None)


# -- step 1: check, load, plan, open ----------------------------------------------------------------------

def _prepare(cfg: ExtractConfig) -> _Prepared | ExtractSummary:
    cfg.validate()
    task: TaskInfo | None = None
    if cfg.task == "token":
        ds, task = load_token_dataset(cfg.data, cfg.tokens_column, cfg.tags_column, cfg.id_column, cfg.tag_scheme,
                                      cfg.repair_tags)
    elif cfg.task == "span":
        ds, task = load_span_dataset(cfg.data, cfg.repair_answers)
    else:
        ds = load_dataset(cfg.data, cfg.text_column, cfg.pair_column, cfg.label_columns, cfg.id_column,
                          allow_empty_text=cfg.allow_empty_text)
    backend = writable_backend(cfg.out, cfg.format, cfg.storage_options)
    backend.check_target("--out")
    rank, world = _distributed()
    device = pick_device(cfg.device)
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    lm = load_model(cfg.model, device="cpu", dtype="float32")
    layers = resolve_model_layers(cfg.layers, lm.num_layers)
    _resolve_max_length(cfg, lm)
    if cfg.project is not None and cfg.project > lm.hidden_size:
        raise InputError(f"--project {cfg.project} exceeds the model's hidden size {lm.hidden_size}; choose a smaller "
                         f"width (e.g. {lm.hidden_size // 4})")
    if task is not None:  # token/span alignment needs every row's words and offsets: no sliced tokenizing
        toks = {name: tokenize_task(lm.tokenizer, s, task, cfg.max_length, cfg.truncation)
                for name, s in ds.splits.items()}
    else:
        toks = {name: _tokenize_share(lm, s, cfg, rank, world) for name, s in ds.splits.items()}
    # sized by the host arrays a segment is assembled from (float32 before 8-bit coding): bounded memory
    width = cfg.project or lm.hidden_size
    segment_tokens = max(1, int(cfg.segment_mb * MiB) // (itemsize(cfg.dtype) * width * len(layers)))
    manifest = _build_manifest(cfg, ds, lm, layers, toks, segment_tokens, device, task)

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
    _barrier(world)
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
            _fit_projection(cfg, ds, lm, toks, layers, device, backend, manifest)
        _barrier(world)
        projection = _load_projection(backend, layers, device)
    _barrier(world)
    segments = [seg for name in ds.splits for seg in plan_segments(name, toks[name].lengths, segment_tokens)]
    done = backend.committed_segments()
    _barrier(world)  # every rank has listed the same committed segments before any rank commits more
    return _Prepared(cfg, ds, lm, layers, toks, manifest, backend, device, rank, world, segments, done, projection,
                     task)


def _tokenize_share(lm: LoadedModel, split: Any, cfg: ExtractConfig, rank: int, world: int) -> Tokenized:
    """One process: every row. Under torchrun: rank R tokenizes the R-th slice of the rows and the ranks sum
    their lengths and truncation counts (a tensor all-reduce), so every rank plans from every length while
    tokenizing only 1/world of them; `_share` then tokenizes the rows of the rank's own segments."""
    if world <= 1:
        return tokenize(lm.tokenizer, split, cfg.max_length, cfg.truncation)
    n = len(split)
    tok = tokenize(lm.tokenizer, split, cfg.max_length, cfg.truncation,
                   rows=np.arange(n * rank // world, n * (rank + 1) // world))
    summed = _sum_over_ranks(world, *tok.lengths.tolist(), tok.truncated)
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


def _fit_projection(cfg: ExtractConfig, ds: Dataset, lm: LoadedModel, toks: dict[str, Tokenized],
                    layers: list[int], device: str, backend: StorageBackend, manifest: dict) -> None:
    """PCA per layer on a sample of the training split (the first split without one), before any segment is
    written; kept in the store (and recorded in the working manifest) so a resumed run reuses it exactly."""
    name = "train" if "train" in ds.splits else next(iter(ds.splits))
    lengths = toks[name].lengths
    rows = sample_rows(lengths)
    missing = [int(r) for r in rows if toks[name].input_ids[r] is None]  # under torchrun: other ranks' rows
    if missing:
        tokenize(lm.tokenizer, ds.splits[name], cfg.max_length, cfg.truncation, rows=np.asarray(missing),
                 into=toks[name])
    seg = Segment(name, -1, rows[np.lexsort((rows, -lengths[rows]))])  # longest first, as plan_batches wants
    plan_batches(seg, lengths, cfg.batch_tokens)
    feats: dict[int, list[np.ndarray]] = {k: [] for k in layers}
    for batch in seg.batches:
        out = forward_batch(lm, toks[name], ds.splits[name], batch, layers, "float32", device, {})
        for k in layers:
            feats[k].append(out[f"L{k}/tokens"])
    arrays = {}
    for k in layers:
        mean, basis = fit_pca(np.concatenate(feats[k]), cfg.project)
        arrays.update(zip(projection_arrays(k), (mean, basis)))
    manifest.setdefault("files", {}).update(backend.write_arrays(arrays, manifest["layout"]["chunk_bytes"]))
    manifest["projection"] = {"fitted_on": {"split": name, "examples": int(len(rows)),
                                            "tokens": int(lengths[rows].sum())}}
    backend.write_manifest(manifest)


def _load_projection(backend: StorageBackend, layers: list[int], device: str) -> dict[int, Any]:
    import torch

    out = {}
    for k in layers:
        mean, basis = (torch.from_numpy(np.asarray(backend.array(n)[:], dtype=np.float32)).to(device)
                       for n in projection_arrays(k))
        out[k] = (mean, basis)
    backend.close()
    return out


def _resolve_max_length(cfg: ExtractConfig, lm: LoadedModel) -> None:
    """Default to the model's limit (at most 512); refuse more than a model with absolute positions takes."""
    limit = lm.tokenizer.model_max_length if 0 < lm.tokenizer.model_max_length < 1_000_000 else None
    positions = getattr(lm.model.config, "max_position_embeddings", None)
    if getattr(lm.model.config, "position_biased_input", True) and isinstance(positions, int) and positions > 0:
        limit = min(limit or positions, positions)  # absolute positions: longer inputs would fail in the model
    if cfg.max_length is None:
        cfg.max_length = min(512, limit or 512)
    elif limit and cfg.max_length > limit:
        raise InputError(f"--max-length {cfg.max_length} exceeds this model's limit of {limit}; use --max-length {limit}")


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
                   "compression": cfg.compression},
        "runtime": {"device": device, "compute_dtype": compute_dtype, "batch_tokens": cfg.batch_tokens},
        "dataset": dataset,
    }


# -- step 2: forward passes into the background writer -----------------------------------------------------

def _write_segments(prep: _Prepared, todo: list[Segment], global_tokens: int) -> tuple[int, int]:
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
    with _progress(global_tokens, cfg.progress and prep.rank == 0, desc) as bar, \
            SegmentWriter(prep.backend, lay["compression"], lay["chunk_bytes"], rank=prep.rank) as writer:
        for n, seg in enumerate(todo):
            _test_failure(prep.rank, n, writer)
            plan_batches(seg, toks[seg.split].lengths, cfg.batch_tokens)
            job = SegmentJob(seg.split, seg.name, seg.index, prep.layers, cfg.dtype, encoding=cfg.encoding)
            for rows in seg.batches:
                job.batches.append(forward_batch(lm, toks[seg.split], prep.ds.splits[seg.split], rows, prep.layers,
                                                 cfg.dtype, prep.device, job.stats, prep.projection))
                bar.update(int(toks[seg.split].lengths[rows].sum()) * scale)
            writer.put(job)
    return total_tokens, writer.bytes_written


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) otherwise. No home-made launcher: torch.distributed only."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        # A bounded wait: a rank that dies without torchrun noticing (e.g. launched by srun) cannot leave the
        # others in a barrier forever. Under torchrun a failed rank ends the group within seconds anyway.
        timeout = timedelta(seconds=float(os.environ.get("FEATSTORE_DIST_TIMEOUT", "1800")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
    return dist.get_rank(), world


def _sum_over_ranks(world: int, *values: int) -> tuple[int, ...]:
    """Totals over every rank (one all-reduce of a small tensor at the end: no objects, no pickle)."""
    if world <= 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    try:
        dist.all_reduce(t)
    except Exception as e:  # noqa: BLE001
        raise PeerFailed(f"rank {dist.get_rank()} of {world}: stopped, another rank failed ({type(e).__name__})") from e
    return tuple(int(v) for v in t.tolist())


def _test_failure(rank: int, n: int, writer: SegmentWriter) -> None:
    """Test hook, FEATSTORE_TEST_FAIL=RANK:N:raise|kill: that rank fails before its segment N, once exactly
    N of its segments are committed (deterministic, no race). `kill` is SIGKILL, as the OOM killer does."""
    spec = os.environ.get("FEATSTORE_TEST_FAIL")
    if not spec:
        return
    r, at, mode = spec.split(":")
    if int(r) != rank or int(at) != n:
        return
    while len(writer.records) < n:
        writer.check()
        time.sleep(0.01)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"FEATSTORE_TEST_FAIL after {n} committed segments")


def _barrier(world: int) -> None:
    """Wait for every rank. A rank that died makes the others fail here (connection closed, or the timeout):
    that is reported as PeerFailed, so the failed rank's own error stays the one error line."""
    if world > 1:
        import torch.distributed as dist

        try:
            dist.barrier()
        except Exception as e:  # noqa: BLE001 - gloo/nccl raise RuntimeError subclasses
            raise PeerFailed(f"rank {dist.get_rank()} of {world}: stopped, another rank failed "
                             f"({type(e).__name__}); committed segments are kept") from e


def _progress(total: int, enabled: bool, desc: str = "extract"):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc=desc, disable=not enabled, smoothing=0.1)


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
    label_names = {c.name: c.names for c in prep.ds.label_columns if c.kind == "class"}
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
    recs = gold_records(split, task)
    blobs = [json.dumps(recs[r], ensure_ascii=False).encode() for r in rows]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    out[f"gold/{name}/json_bytes"] = np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()
    out[f"gold/{name}/json_offsets"] = offsets
    return out


def summary_dict(s: ExtractSummary) -> dict[str, Any]:
    d = asdict(s)
    d["tokens_per_second"] = s.tokens_per_second
    return d
