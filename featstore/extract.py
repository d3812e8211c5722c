"""`featstore extract`: run a frozen encoder once and write the requested layers into a store."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import __version__
from .data import Dataset, load_dataset
from .errors import ExtractionError, InputError, StoreError
from .layout import CODECS, H5Layout, Layout, ZarrLayout, check_can_create, layout_for
from .manifest import DTYPES, FORMAT_VERSION, diff_settings, fingerprint, validate
from .models import LoadedModel, config_dict, load_model, resolve_layers, tokenizer_hash, truncate_after, weights_hash
from .plan import Tokenized, pad_batch, plan_batches, plan_segments, storage_order, tokenize
from .writer import BackgroundWriter, SegmentJob

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
    dtype: str = "float16"
    format: str = "zarr"
    compression: str = "none"
    batch_tokens: int = 16384
    segment_mb: float = 256
    chunk_mb: float = 4.0
    device: str = "auto"
    compute_dtype: str = "auto"
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        problems = []
        if self.dtype not in DTYPES:
            problems.append(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.format not in ("zarr", "hdf5"):
            problems.append(f"--format {self.format!r}: use zarr or hdf5")
        if self.max_length is not None and self.max_length < 2:
            problems.append("--max-length must be at least 2")
        if self.batch_tokens < 1:
            problems.append("--batch-tokens must be positive")
        if self.segment_mb <= 0 or self.chunk_mb <= 0:
            problems.append("--segment-mb and --chunk-mb must be positive")
        if self.truncation not in ("longest_first", "only_first", "only_second"):
            problems.append(f"--truncation {self.truncation!r}: use longest_first, only_first or only_second")
        if self.compute_dtype not in ("auto",) + DTYPES:
            problems.append(f"--compute-dtype {self.compute_dtype!r}: use auto or one of {', '.join(DTYPES)}")
        codecs = CODECS.get(self.format, ())
        if self.format in CODECS and self.compression not in codecs:
            problems.append(f"--compression {self.compression!r} for {self.format}: use one of {', '.join(codecs)}")
        if "://" in self.out:
            problems.append(f"--out {self.out}: extract writes a local store; `featstore push` it to a URL afterwards")
        if problems:
            raise InputError("; ".join(problems))


@dataclass
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
    rank: int = 0  # under torchrun: this process's rank (tokens and bytes are this rank's share)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise InputError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    if kind not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    return device


def _check_out(cfg: ExtractConfig) -> None:
    """An existing `--out` must be a featstore store (resume/overwrite) or an empty directory."""
    p = cfg.out
    not_store = InputError(f"--out {p} exists and is not a featstore store; choose another path (nothing there "
                           "is touched, not even with --overwrite)")
    if cfg.format == "zarr":
        if os.path.isfile(p):
            raise InputError(f"--out {p} exists and is a file, not a featstore store; choose another path")
        if os.path.isdir(p) and os.listdir(p) and not _holds_store(ZarrLayout(p)):
            raise not_store
    else:
        if os.path.isdir(p):
            raise InputError(f"--out {p} is a directory; --format hdf5 writes one file, e.g. --out {p}.h5")
        if os.path.isfile(p) and not _holds_store(H5Layout(p)):
            raise not_store
    if not os.path.exists(p):
        check_can_create(p, "--out")


def _holds_store(layout: Layout) -> bool:
    """Whether a path holds a featstore store (complete or not): a manifest of ours, valid."""
    try:
        m = layout.read_manifest()
        return m is not None and validate(m, layout.root) is m
    except (StoreError, OSError, ValueError):
        return False
    finally:
        layout.close()


def _remove_store(layout: Layout) -> None:
    layout.close()
    if isinstance(layout, H5Layout):
        if os.path.exists(layout.root):
            os.remove(layout.root)
        shutil.rmtree(layout.parts, ignore_errors=True)
    else:
        shutil.rmtree(layout.root, ignore_errors=True)


def _build_manifest(cfg: ExtractConfig, ds: Dataset, lm: LoadedModel, layers: list[int],
                    toks: dict[str, Tokenized], segment_tokens: int, device: str, compute_dtype: str) -> dict:
    model = {"name": cfg.model, "path": lm.path, "revision": getattr(lm.model.config, "_commit_hash", None),
             "config": config_dict(lm.model), "weights_sha256": weights_hash(lm.model),
             "num_layers": lm.num_layers, "hidden_size": lm.hidden_size, "num_parameters": lm.num_parameters,
             "architecture": type(lm.model).__name__}
    tokenizer = {"name": lm.path, "sha256": tokenizer_hash(lm.tokenizer), "class": type(lm.tokenizer).__name__}
    settings = {"layers": layers, "max_length": cfg.max_length, "truncation": cfg.truncation,
                "pooling": ["cls", "mean"], "dtype": cfg.dtype}
    splits = {name: {"source": os.path.abspath(s.source), "sha256": s.content_hash(), "n_examples": len(s),
                     "n_tokens": int(toks[name].lengths.sum()), "truncated": toks[name].truncated}
              for name, s in ds.splits.items()}
    fp = fingerprint(model, tokenizer, settings, {k: v["sha256"] for k, v in splits.items()})
    return {
        "format_version": FORMAT_VERSION, "tool": {"name": "featstore", "version": __version__},
        "format": cfg.format, "fingerprint": fp, "complete": False, "model": model, "tokenizer": tokenizer,
        "settings": settings,
        "layout": {"segment_tokens": segment_tokens, "chunk_bytes": int(cfg.chunk_mb * MiB),
                   "compression": cfg.compression},
        "runtime": {"device": device, "compute_dtype": compute_dtype, "batch_tokens": cfg.batch_tokens},
        "dataset": {"text_column": ds.text_column, "pair_column": ds.pair_column, "id_column": ds.id_column,
                    "splits": splits, "label_columns": [c.to_json() for c in ds.label_columns]},
    }


def extract(cfg: ExtractConfig) -> ExtractSummary:
    """Extract features of every split into `cfg.out`; resumes a matching interrupted run."""
    import torch

    cfg.validate()
    t_start = time.perf_counter()
    ds = load_dataset(cfg.data, cfg.text_column, cfg.pair_column, cfg.label_columns, cfg.id_column)
    _check_out(cfg)
    rank, world = _distributed()
    device = pick_device(cfg.device)
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    compute_dtype = cfg.compute_dtype if cfg.compute_dtype != "auto" else (
        "bfloat16" if device.startswith("cuda") else "float32")
    lm = load_model(cfg.model, device="cpu", dtype="float32")
    layers = resolve_layers(cfg.layers, lm.num_layers)
    limit = lm.tokenizer.model_max_length if 0 < lm.tokenizer.model_max_length < 1_000_000 else None
    positions = getattr(lm.model.config, "max_position_embeddings", None)
    if getattr(lm.model.config, "position_biased_input", True) and isinstance(positions, int) and positions > 0:
        limit = min(limit or positions, positions)  # absolute positions: longer inputs would fail in the model
    if cfg.max_length is None:
        cfg.max_length = min(512, limit or 512)
    elif limit and cfg.max_length > limit:
        raise InputError(f"--max-length {cfg.max_length} exceeds this model's limit of {limit}; use --max-length {limit}")
    toks = {name: tokenize(lm.tokenizer, s, cfg.max_length, cfg.truncation) for name, s in ds.splits.items()}
    itemsize = 4 if cfg.dtype == "float32" else 2
    segment_tokens = max(1, int(cfg.segment_mb * MiB) // (itemsize * lm.hidden_size * len(layers)))
    manifest = _build_manifest(cfg, ds, lm, layers, toks, segment_tokens, device, compute_dtype)

    # Every rank runs the same read-only checks (so all fail alike); only rank 0 changes the store, after
    # every rank has looked at it.
    layout = layout_for(cfg.out, cfg.format)
    old = layout.read_manifest() if os.path.exists(cfg.out) or os.path.exists(cfg.out + ".parts") else None
    if old is not None and not cfg.overwrite:
        if old.get("fingerprint") != manifest["fingerprint"]:
            raise StoreError(f"--out {cfg.out} holds a different store ({', '.join(diff_settings(old, manifest))} "
                             "differ); use another --out, or --overwrite to replace it")
        if old.get("complete"):
            layout.close()
            return ExtractSummary(cfg.out, old["fingerprint"], {k: v["n_examples"] for k, v in
                                  old["dataset"]["splits"].items()}, 0, 0, 0, time.perf_counter() - t_start,
                                  len(old.get("segments", [])), len(old.get("segments", [])), device, True,
                                  rank=rank)
        manifest["layout"] = old["layout"]  # resume with the recorded segmentation
        segment_tokens = old["layout"]["segment_tokens"]
    _barrier(world)
    if rank == 0:
        if old is not None and cfg.overwrite:
            _remove_store(layout)
        if cfg.format == "zarr":
            os.makedirs(cfg.out, exist_ok=True)
        layout.write_manifest(manifest)  # complete: false; readers refuse it, a re-run resumes it
        layout.committed_segments()  # clears partial segments left by a killed run
    _barrier(world)
    done = layout.committed_segments(clean=False)

    segments = [seg for name in ds.splits for seg in plan_segments(name, toks[name].lengths, segment_tokens)]
    # Each rank takes a deterministic share of the planned segments and writes its own.
    todo = [s for i, s in enumerate(segments) if i % world == rank and f"{s.split}/{s.name}" not in done]

    truncate_after(lm.model, max(layers))
    lm.model.to(device=device, dtype=getattr(torch, compute_dtype))
    writer = BackgroundWriter(layout, manifest["layout"]["compression"], manifest["layout"]["chunk_bytes"])
    total_tokens = sum(int(toks[s.split].lengths[s.examples].sum()) for s in todo)
    bar = _progress(total_tokens, cfg.progress and rank == 0)
    t_loop = time.perf_counter()
    try:
        for seg in todo:
            plan_batches(seg, toks[seg.split].lengths, cfg.batch_tokens)
            job = SegmentJob(seg.split, seg.name, seg.index, layers, cfg.dtype)
            for rows in seg.batches:
                job.batches.append(forward_batch(lm, toks[seg.split], ds.splits[seg.split], rows, layers,
                                                  cfg.dtype, device, job.stats))
                bar.update(int(toks[seg.split].lengths[rows].sum()))
            writer.put(job)
        writer.close()
        loop_seconds = time.perf_counter() - t_loop
    finally:
        bar.close()
        if writer.thread.is_alive():
            writer.queue.put(None)
    _barrier(world)
    if rank == 0:  # every rank's segments are committed: rank 0 writes the manifest
        _finalize(layout, manifest, ds, lm, layers, list(layout.committed_segments().values()), toks)
    _barrier(world)
    return ExtractSummary(cfg.out, manifest["fingerprint"], {k: len(s) for k, s in ds.splits.items()},
                          total_tokens, sum(t.truncated for t in toks.values()), writer.bytes_written,
                          time.perf_counter() - t_start, len(segments), len(done), device,
                          loop_seconds=loop_seconds, rank=rank)


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) otherwise. No home-made launcher: torch.distributed only."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc="extract", disable=not enabled, smoothing=0.1)


def forward_batch(lm: LoadedModel, tok: Tokenized, split, rows: np.ndarray, layers: list[int], dtype: str,
                   device: str, stats: dict[int, list[float]]) -> dict[str, Any]:
    """One padded forward pass; returns host arrays of the kept layers (ragged tokens + pooled)."""
    import torch

    lengths = tok.lengths[rows]
    ids, mask = pad_batch([tok.input_ids[r] for r in rows], lm.tokenizer.pad_token_id or 0)
    types = pad_batch([tok.token_type_ids[r] for r in rows])[0] if tok.token_type_ids is not None else None
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if types is not None:
        kwargs["token_type_ids"] = types.to(device)
    store_dtype = getattr(torch, dtype)
    limit = torch.finfo(store_dtype).max
    with torch.inference_mode():
        out = lm.model(**kwargs, output_hidden_states=True)
        m = kwargs["attention_mask"].bool()  # (B, T)
        weights = (kwargs["attention_mask"].float() / m.sum(1, keepdim=True)).unsqueeze(1)  # (B, 1, T)
        result: dict[str, Any] = {}
        for k in layers:
            h = out.hidden_states[k].float()  # (B, T, D)
            flat = h[m]  # (n_tokens, D), example after example
            pooled = torch.cat([h[:, 0], torch.bmm(weights, h).squeeze(1)])  # (2B, D): cls then mean
            # Sum and sum of squares give the statistics and screen for overflow in one BLAS pass each:
            # every |x| is below the stored dtype's max whenever the sum of squares is.
            total, squares = float(flat.sum()), float(torch.dot(flat.view(-1), flat.view(-1)))
            p_squares = float(torch.dot(pooled.view(-1), pooled.view(-1)))
            if not (abs(total) < float("inf") and squares < limit * limit and p_squares < limit * limit):
                _check_finite(k, h, pooled, m, rows, split, store_dtype, dtype)
            st = stats.setdefault(k, [0.0, 0.0, 0])
            st[0] += total
            st[1] += squares
            st[2] += flat.numel()
            pooled = _host(pooled.to(store_dtype))
            result[f"L{k}/tokens"] = _host(flat.to(store_dtype))
            result[f"L{k}/cls"], result[f"L{k}/mean"] = pooled[:len(rows)], pooled[len(rows):]
    result["lengths"] = lengths
    result["rows"] = rows
    result["ids"] = [split.ids[r] for r in rows]
    result["input_ids"] = np.concatenate([np.asarray(tok.input_ids[r], dtype=np.int32) for r in rows])
    return result


def _host(t) -> np.ndarray:
    import torch

    t = t.detach().to("cpu")
    return t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _check_finite(layer: int, h, pooled, mask, rows, split, store_dtype, dtype: str) -> None:
    """Exact check once the cheap screen fired: raise naming the first example that does not fit."""
    import torch

    finite = torch.isfinite(h.to(store_dtype)).all(dim=-1) | ~mask  # (B, T)
    ok_pooled = torch.isfinite(pooled.to(store_dtype)).all(dim=-1).view(2, -1).all(dim=0)  # (B,)
    bad = ~(finite.all(dim=1) & ok_pooled)
    if bad.any():
        b = int(bad.nonzero()[0, 0])
        raise ExtractionError(
            f"non-finite features in layer {layer} for example {split.ids[rows[b]]!r} (split {split.name!r}, "
            f"row {int(rows[b])}) when stored as {dtype}; use --dtype bfloat16 or float32")


def _finalize(layout: Layout, manifest: dict, ds: Dataset, lm: LoadedModel, layers: list[int],
              records: list[dict], toks: dict[str, Tokenized]) -> None:
    """Labels (storage order), label-name features, statistics; then the manifest with complete: true."""
    records = sorted(records, key=lambda r: (r["split"], r["index"]))
    arrays: dict[str, np.ndarray] = {}
    for name, split in ds.splits.items():
        rows = storage_order(toks[name].lengths)  # segments are consecutive slices of it
        for col, target in split.targets.items():
            arrays[f"labels/{name}/{col}"] = target[rows]
    label_names = {c.name: c.names for c in ds.label_columns if c.kind == "class"}
    arrays.update(label_name_features(lm, label_names, layers, manifest["runtime"]["device"]))
    lay = manifest["layout"]
    manifest["files"] = layout.write_arrays(arrays, "none", lay["chunk_bytes"]) if arrays else {}
    stats = {}
    for k in layers:
        s, ss, n = (sum(r["stats"][str(k)][i] for r in records) for i in range(3))
        mean = s / max(n, 1)
        stats[f"L{k}"] = {"mean": mean, "std": max(ss / max(n, 1) - mean * mean, 0.0) ** 0.5}
    manifest["stats"] = stats
    manifest["segments"] = [{k: r[k] for k in ("split", "name", "index", "n_examples", "n_tokens", "files")}
                            for r in records]
    manifest["label_features"] = sorted(label_names)
    manifest["complete"] = True
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    layout.finalize(manifest)
    layout.close()


def label_name_features(lm: LoadedModel, label_names: dict[str, list[str]], layers: list[int],
                    device: str) -> dict[str, np.ndarray]:
    """Mean-pooled features of each label name (e.g. "sport"), for label-prior initialisation of heads."""
    import torch

    out = {}
    for col, names in label_names.items():
        enc = lm.tokenizer(names, padding=True, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.inference_mode():
            hs = lm.model(**enc, output_hidden_states=True).hidden_states
        mf = enc["attention_mask"].unsqueeze(-1).float()
        for k in layers:
            out[f"label_features/{col}/L{k}"] = ((hs[k].float() * mf).sum(1) / mf.sum(1)).cpu().numpy()
    return out


def summary_dict(s: ExtractSummary) -> dict[str, Any]:
    d = asdict(s)
    d["tokens_per_second"] = s.tokens_per_second
    return d
