"""`featstore estimate`: how many tokens, bytes and seconds an extraction will take, before running it; and the
free-space check `extract` runs before its first forward pass.

Tokens are counted by tokenizing the real inputs (every row, or a random sample of `sample` rows per split,
extrapolated with a 95% error bar). Bytes are the store's arrays at their logical size (what `featstore info`
reports per token, plus the per-example arrays, labels and label-name features) and its metadata (manifest,
array headers); the chosen encoding is shown beside its alternatives. Time is the token count at a rate:
measured here by a short forward pass on the chosen device, or stated with `rate`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.files import format_bytes
from ..io.transport import is_url
from ..store.encoding import CODED, itemsize, row_overhead
from .config import ExtractConfig
from .plan import plan_segments
from .tasks import gold_records

MiB = 1 << 20
ZARR_JSON_ARRAY, ZARR_JSON_GROUP = 500, 250  # bytes of an array's / a group's zarr.json
SEGMENT_RECORD, RECORD_PER_ARRAY = 540, 304  # a segment's record: fixed part, and per array (its files' sha256)
MANIFEST_FIXED, MANIFEST_PER_LAYER = 4000, 500  # model, settings, dataset; per-layer statistics
ALTERNATIVES = ("float32", "float16", "int8")


@dataclass
class Layout:
    """What fixes a store's size beside its token count."""
    layers: int
    width: int  # stored features per layer (the projection's width, else the hidden size)
    hidden: int
    encoding: str
    projected: bool
    task: str = "sentence"


@dataclass
class Estimate:
    model: str
    layers: list[int]
    hidden_size: int
    width: int
    encoding: str
    max_length: int
    examples: dict[str, int]
    tokens: dict[str, int]
    tokens_error: int  # 95% half-width of the total when sampled, else 0
    sampled: bool
    bytes_per_token: int  # token features of every kept layer (+ 8-bit scales) and the token ids
    array_bytes: int
    metadata_bytes: int
    total_bytes: int
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    rate: float | None = None  # tokens/s
    rate_source: str = ""
    seconds: float | None = None

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())


def token_bytes(lay: Layout) -> int:
    """Stored bytes per token: features of every layer (+ a 4-byte scale per row and layer for 8-bit codes),
    the int32 token id, and token/span tasks' three int32 alignment arrays."""
    feats = lay.layers * (lay.width * itemsize(lay.encoding) + row_overhead(lay.encoding))
    return feats + 4 + (12 if lay.task != "sentence" else 0)


def array_bytes(lay: Layout, tokens: int, examples: int, id_bytes: int, segments: int, labels: dict[str, int | None],
                extra: int = 0) -> int:
    """Logical bytes of every array of a store: token rows, per-example arrays (offsets, length, row, ids,
    cls + mean vectors), 8-bit side tables, labels, label-name features, the projection; `extra` = task arrays."""
    per_example = 8 + 4 + 8 + 8 + lay.layers * 2 * (lay.width * itemsize(lay.encoding) + row_overhead(lay.encoding))
    per_segment = 16  # offsets and id_offsets have one entry more than examples
    if lay.encoding in CODED:
        per_segment += lay.layers * 3 * 2 * lay.width * 4  # shift and gain (D,) beside tokens, cls, mean
    label_bytes = sum(examples * (8 if n is not None else 4) for n in labels.values())
    label_features = sum(n * lay.width * 4 * lay.layers for n in labels.values() if n)
    projection = lay.layers * (lay.hidden + lay.hidden * lay.width) * 4 if lay.projected else 0
    return (tokens * token_bytes(lay) + examples * per_example + id_bytes + segments * per_segment + label_bytes
            + label_features + projection + extra)


def metadata_bytes(lay: Layout, segments: int, splits: int, labels: dict[str, int | None]) -> int:
    """Bytes of JSON beside the arrays: each array's and group's zarr.json, each segment's record (one entry per
    file) and the manifest (its settings and statistics, and every segment's record again). The constants were
    measured on Zarr stores written by `extract` (tests/featstore/test_estimate.py checks them)."""
    L, classes = lay.layers, sum(1 for n in labels.values() if n)
    per_segment = 6 + 3 * L * (4 if lay.encoding in CODED else 1) + (3 if lay.task != "sentence" else 0)
    arrays = segments * per_segment + splits * len(labels) + classes * L + (2 * L if lay.projected else 0)
    groups = (segments * (1 + L) + splits * (1 + bool(labels)) + 2 + bool(labels) + (1 + classes if classes else 0)
              + (1 + L if lay.projected else 0))
    record = SEGMENT_RECORD + RECORD_PER_ARRAY * per_segment
    manifest = MANIFEST_FIXED + MANIFEST_PER_LAYER * L * (2 if lay.projected else 1) + segments * (record + 70)
    return manifest + segments * record + arrays * ZARR_JSON_ARRAY + groups * ZARR_JSON_GROUP


def estimate(cfg: ExtractConfig, sample: int | None = None, rate: float | None = None,
             measure: bool = True) -> Estimate:
    """Count tokens on `cfg`'s inputs (all rows, or `sample` per split) and size the store it would write.
    `rate` (tokens/s) states the extraction speed; else, with `measure`, a short forward pass measures it."""
    from .models import load_config_and_tokenizer, resolve_model_layers
    from .plan import tokenize
    from .sources import load_inputs, resolve_max_length
    from .tasks import tokenize_task

    cfg.validate()
    if sample is not None and sample < 2:
        raise InputError(f"--sample {sample}: give at least 2 rows per split (or leave it out to count every row)")
    if rate is not None and rate <= 0:
        raise InputError(f"--rate {rate}: give tokens per second, a positive number")
    ds, task = load_inputs(cfg)
    path, config, tokenizer = load_config_and_tokenizer(cfg.model)
    layers = resolve_model_layers(cfg.layers, int(config.num_hidden_layers))
    resolve_max_length(cfg, tokenizer, config)
    hidden = int(config.hidden_size)
    if cfg.project is not None and cfg.project > hidden:
        raise InputError(f"--project {cfg.project} exceeds the model's hidden size {hidden}")
    tokens, err2, lengths, sampled = {}, 0.0, {}, False
    rng = np.random.default_rng(0)
    for name, split in ds.splits.items():
        n = len(split)
        if task is not None:
            lengths[name] = tokenize_task(tokenizer, split, task, cfg.max_length, cfg.truncation).lengths
        elif sample is not None and sample < n:
            rows = np.sort(rng.choice(n, sample, replace=False))
            lens = tokenize(tokenizer, split, cfg.max_length, cfg.truncation, rows=rows, into=None).lengths[rows]
            tokens[name] = int(round(lens.mean() * n))
            fpc = (n - sample) / (n - 1)  # finite-population correction
            err2 += (n * lens.std(ddof=1)) ** 2 / sample * fpc
            sampled = True
            continue
        else:
            lengths[name] = tokenize(tokenizer, split, cfg.max_length, cfg.truncation).lengths
        tokens[name] = int(lengths[name].sum())
    lay = Layout(len(layers), cfg.project or hidden, hidden, cfg.encoding, bool(cfg.project), cfg.task)
    e = size(lay, cfg, ds, task, tokens, lengths)
    e.model, e.layers, e.max_length = cfg.model, layers, cfg.max_length
    e.tokens_error, e.sampled = int(round(1.96 * math.sqrt(err2))), sampled
    if rate is not None:
        e.rate, e.rate_source = float(rate), "stated"
    elif measure:
        e.rate, e.rate_source = measure_rate(cfg, ds, tokenizer, layers)
    if e.rate:
        e.seconds = e.total_tokens / e.rate
    return e


def size(lay: Layout, cfg: ExtractConfig, ds: Any, task: Any, tokens: dict[str, int],
         lengths: dict[str, np.ndarray]) -> Estimate:
    """The store's bytes for these token counts (lengths per split where counted: exact segment counts)."""
    segment_tokens = max(1, int(cfg.segment_mb * MiB) // (itemsize(cfg.dtype) * lay.width * lay.layers))
    n_ex = {k: len(s) for k, s in ds.splits.items()}
    segments = sum(len(plan_segments(k, lengths[k], segment_tokens)) if k in lengths
                   else max(1, -(-tokens[k] // segment_tokens)) for k in ds.splits)
    ids = sum(len(i.encode()) for s in ds.splits.values() for i in s.ids)
    labels = {c.name: (len(c.names) if c.kind == "class" else None) for c in ds.label_columns}
    extra = 0
    if task is not None:
        for k, s in ds.splits.items():
            extra += sum(len(json.dumps(r, ensure_ascii=False).encode()) for r in gold_records(s, task)) \
                + (n_ex[k] + 1) * 8
            extra += tokens[k] * 4 if task.kind == "token" else n_ex[k] * 8
    total_ex, total_tok = sum(n_ex.values()), sum(tokens.values())

    def total(l: Layout) -> tuple[int, int]:
        a = array_bytes(l, total_tok, total_ex, ids, segments, labels, extra)
        return a, metadata_bytes(l, segments, len(n_ex), labels)

    arrays, meta = total(lay)
    alts = []
    for enc in dict.fromkeys(ALTERNATIVES + (lay.encoding,)):
        for width in dict.fromkeys([lay.width] + ([] if lay.projected else [max(1, lay.hidden // 4)])):
            alt = Layout(lay.layers, width, lay.hidden, enc, width != lay.hidden or lay.projected, lay.task)
            a, m = total(alt)
            alts.append({"encoding": enc, "project": width if alt.projected else None,
                         "bytes_per_token": token_bytes(alt), "total_bytes": a + m,
                         "chosen": enc == lay.encoding and width == lay.width})
    return Estimate(model="", layers=[], hidden_size=lay.hidden, width=lay.width, encoding=lay.encoding, max_length=0,
                    examples=n_ex, tokens=tokens, tokens_error=0, sampled=False, bytes_per_token=token_bytes(lay),
                    array_bytes=arrays, metadata_bytes=meta, total_bytes=arrays + meta, alternatives=alts)


def measure_rate(cfg: ExtractConfig, ds: Any, tokenizer: Any, layers: list[int],
                 budget: int = 4096) -> tuple[float, str]:
    """Tokens/s of one forward pass (to the deepest kept layer) over the first `budget // 64` inputs of the first
    split, on the device extraction would use, after a warm-up pass. Loads the model's weights. Extraction also
    tokenizes, writes and checksums, so its end-to-end rate is somewhat lower."""
    import torch

    from ..device import pick_device
    from .models import load_model, truncate_after

    device = pick_device(cfg.device)
    lm = load_model(cfg.model, device="cpu", dtype="float32")
    truncate_after(lm.model, max(layers))
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    lm.model.to(device=device, dtype=dtype)
    split = next(iter(ds.splits.values()))
    texts = split.texts[:max(1, budget // 64)]
    pairs = split.pairs[:len(texts)] if split.pairs is not None else None
    enc = tokenizer(texts, pairs, truncation=cfg.truncation if cfg.task == "sentence" else True,
                    max_length=cfg.max_length, padding=True, return_tensors="pt")
    enc = {k: v.to(device) for k, v in enc.items()}
    n = int(enc["attention_mask"].sum())
    with torch.inference_mode():
        lm.model(**enc, output_hidden_states=True)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        lm.model(**enc, output_hidden_states=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return n / max(seconds, 1e-9), f"measured on {device} ({n:,} tokens, forward pass only)"


def format_estimate(e: Estimate) -> str:
    err = f" ± {e.tokens_error:,} (95%, sampled)" if e.sampled else " (counted)"
    lines = [f"model        {e.model}  (hidden {e.hidden_size}; layers {e.layers}; max_length {e.max_length})",
             f"examples     {sum(e.examples.values()):,}  ({', '.join(f'{k} {v:,}' for k, v in e.examples.items())})",
             f"tokens       {e.total_tokens:,}{err}",
             f"per token    {e.bytes_per_token:,} bytes ({e.encoding}"
             + (f", projected to {e.width}" if e.width != e.hidden_size else "") + ")",
             f"store        {format_bytes(e.total_bytes)}  ({e.total_bytes:,} bytes: arrays "
             f"{format_bytes(e.array_bytes)}, metadata {format_bytes(e.metadata_bytes)})"]
    if e.seconds is not None:
        lines.append(f"time         {_duration(e.seconds)} at {e.rate:,.0f} tokens/s, {e.rate_source}")
    lines.append("alternatives encoding   project  bytes/token        store")
    for a in e.alternatives:
        mark = "  <- chosen" if a["chosen"] else ""
        lines.append(f"             {a['encoding']:<10} {str(a['project'] or '-'):>7}  {a['bytes_per_token']:>11,}"
                     f"  {format_bytes(a['total_bytes']):>11}{mark}")
    return "\n".join(lines)


def estimate_dict(e: Estimate) -> dict[str, Any]:
    return {**asdict(e), "total_tokens": e.total_tokens}


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


# -- the free-space check ------------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """`500M`, `20G`, `1.5TiB`, `123456` -> bytes (binary units)."""
    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().replace("IB", "").replace(" ", "")
    num = t.rstrip("BKMGT")
    unit = t[len(num):].rstrip("B") or ""
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if value < 0 or unit not in units:
        raise InputError(f"size {text!r}: give bytes or a number with K, M, G or T (e.g. 20G)")
    return int(value * units[unit])


def existing_bytes(path: str) -> int:
    """Bytes already at `path` (a resumed run's committed segments count as written)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files if os.path.isfile(os.path.join(root, f)))
    return total


def free_bytes(path: str) -> int:
    """Free bytes on the file system that will hold `path` (its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def check_space(out: str, need: int, free: int | None = None) -> tuple[int, int] | None:
    """Refuse (InputError) when `out`'s file system has less free space than `need` bytes still to write.
    `free` overrides what the file system reports (a quota). Returns (still to write, free), None for a URL."""
    if is_url(out):
        return None
    todo = max(0, need - existing_bytes(out)) if os.path.exists(out) else need
    have = free_bytes(out) if free is None else free
    if todo > have:

        raise InputError(f"--out {out}: the store needs about {format_bytes(todo)} more and only {format_bytes(have)} "
                         "is free there; free some space, choose another --out, a smaller --encoding/--project "
                         "(see `featstore estimate`), or pass --no-space-check")
    return todo, have
