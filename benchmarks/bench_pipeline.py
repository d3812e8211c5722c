"""Pipeline ceiling: everything extraction does after the model, fed synthetic hidden states at an unlimited rate.

The real code path after the forward pass (`extract.forward.keep_layers`: layer selection, pooling, overflow
screen and statistics, cast, host copy; then `SegmentWriter`: 8-bit encoding, chunk writes, checksums, segment
commits; then the manifest and, for HDF5, packing the parts) for a 1536-wide model (DeBERTa-v2-xxlarge's width)
keeping 1, 4 or all 48 layers, float16 or int8, Zarr or HDF5, sha256 or BLAKE3 checksums. Each case is timed
next to a raw sequential write + fsync of as many bytes to the same disk, in the same repetition; the pipeline
is timed until every file it wrote is fsynced, so both have reached the disk. Each case handles `--mb` MiB of float16 features
(tokens = mb / (layers x 1536 x 2 B)), so every case takes seconds.

The tokens/s a model must exceed to be writer-bound is printed next to the FLOP-based estimate for
DeBERTa-v2-xxlarge on an H100/H200: ~1.36e9 non-embedding parameters x 2 FLOP = 2.7 GFLOP per token; at 40% of
989 TFLOP/s dense bf16 that is ~145k tokens/s (the issue rounds it to 140k).

    python benchmarks/bench_pipeline.py --reps 3 --json benchmarks/results/pipeline.json
    python benchmarks/bench_pipeline.py --smoke        # 2 MiB per case, one repetition
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from featstore.extract.device_side import encode_segment_on_device  # noqa: E402
from featstore.extract.forward import keep_layers  # noqa: E402
from featstore.extract.writer import SegmentJob, SegmentWriter  # noqa: E402
from featstore.io.hashing import IOOptions, default_io_threads  # noqa: E402
from featstore.store import local_backend  # noqa: E402
from featstore.store.encoding import itemsize  # noqa: E402
from featstore.store.manifest import FORMAT_VERSION, complete_manifest  # noqa: E402

HIDDEN = 1536
MODEL_LAYERS = 48
XXLARGE_TOKENS_PER_S = 0.4 * 989e12 / 2.72e9  # 40% of an H100 dense bf16 / FLOP per token
MiB = 1 << 20


def synthetic_batches(n_tokens: int, batch: int, seq: int, seed: int = 0):
    """Padded batches of hidden states already in memory, as a forward pass leaves them: (B, T, D) float32 per
    layer (a few distinct tensors reused across layers: every layer is still cast, pooled, copied and written)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(batch, seq, HIDDEN, generator=g) * 0.5 for _ in range(4)]  # (B, T, D)
    hidden = tuple(base[i % len(base)] for i in range(MODEL_LAYERS + 1))
    rng = np.random.default_rng(seed)
    out, done = [], 0
    while done < n_tokens:
        lengths = rng.integers(seq // 2, seq + 1, batch)
        lengths[0] = seq
        lengths = lengths[:max(1, min(batch, -(-(n_tokens - done) // seq)))]
        mask = torch.zeros(len(lengths), seq, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        out.append((tuple(h[:len(lengths)] for h in hidden), mask, lengths))
        done += int(lengths.sum())
    return out


def manifest_for(fmt: str, layers: list[int], encoding: str, dtype: str, n_examples: int, n_tokens: int,
                 segment_tokens: int, hash_name: str) -> dict:
    settings = {"layers": layers, "max_length": 512, "truncation": "longest_first", "pooling": ["cls", "mean"],
                "dtype": dtype}
    if encoding != dtype:
        settings["encoding"] = encoding
    return {"format_version": FORMAT_VERSION, "tool": {"name": "featstore", "version": "bench"}, "format": fmt,
            "fingerprint": "0" * 64, "complete": False,
            "model": {"name": "synthetic-1536", "hidden_size": HIDDEN, "num_layers": MODEL_LAYERS},
            "tokenizer": {"sha256": "0" * 64}, "settings": settings,
            "layout": {"segment_tokens": segment_tokens, "chunk_bytes": 4 * MiB, "compression": "none",
                       "hash": hash_name},
            "dataset": {"splits": {"train": {"n_examples": n_examples, "n_tokens": n_tokens, "sha256": "0" * 64}},
                        "label_columns": []}}


def run_pipeline(root: str, fmt: str, n_layers: int, encoding: str, encode_on: str, hash_name: str, threads: int,
                 batches: list, stage: str = "all") -> tuple[float, int, int]:
    """Seconds, stored bytes and tokens for one extraction of `batches` through the real post-model path.
    `stage="writer"` times only what the host does after the device: the per-batch work of `keep_layers` (and
    8-bit coding with `encode_on="device"`) is done before the clock starts, as a GPU would do it."""
    layers = list(range(MODEL_LAYERS - n_layers + 1, MODEL_LAYERS + 1))  # the top layers
    dtype = "float32" if encoding == "int8" else encoding
    segment_tokens = 256 * MiB // (itemsize(dtype) * HIDDEN * n_layers)  # as `featstore extract` plans them
    path = os.path.join(root, "store.h5" if fmt == "hdf5" else "store")
    backend = local_backend(path, fmt)
    backend.io = IOOptions(threads, hash_name)
    n_tokens = sum(int(b[2].sum()) for b in batches)
    n_examples = sum(len(b[2]) for b in batches)
    manifest = manifest_for(fmt, layers, encoding, dtype, n_examples, n_tokens, segment_tokens, hash_name)
    backend.create()
    on_device = encoding == "int8" and encode_on == "device"

    def jobs():
        """Segments as the forward loop hands them to the writer (the post-model work of every batch done)."""
        job, held, index, row = None, 0, 0, 0
        for hidden, mask, lengths in batches:
            if job is None:
                job = SegmentJob("train", f"s{index:05d}", index, layers, dtype, encoding=encoding)
            feats = keep_layers(hidden, mask, layers, dtype, job.stats, hand_over="device" if on_device else "copying")
            n = len(lengths)
            feats.update(lengths=lengths, rows=np.arange(row, row + n), ids=[str(i) for i in range(row, row + n)],
                         input_ids=np.zeros(int(lengths.sum()), np.int32))
            job.batches.append(feats)
            held, row = held + int(lengths.sum()), row + n
            if held >= segment_tokens or row == n_examples:
                if on_device:
                    job.encoded = encode_segment_on_device(job.batches, layers, encoding)
                yield job
                job, held, index = None, 0, index + 1

    ready = list(jobs()) if stage == "writer" else None  # writer stage: the device's part done beforehand
    os.sync()
    t0 = time.perf_counter()
    with SegmentWriter(backend, "none", 4 * MiB) as writer:
        for job in ready if ready is not None else jobs():
            writer.put(job)
    backend.finalize(complete_manifest(manifest, list(backend.committed_segments().values()), layers, []))
    backend.close()
    fsync_tree(path)
    seconds = time.perf_counter() - t0
    return seconds, writer.bytes_written, n_tokens


def fsync_tree(path: str) -> None:
    """fsync every file of the store (not `os.sync()`: that would also wait for other processes' writes)."""
    files = [path] if os.path.isfile(path) else [os.path.join(d, n) for d, _, ns in os.walk(path) for n in ns]
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def raw_write(root: str, blob: np.ndarray, nbytes: int) -> float:
    """A plain sequential write + fsync of `nbytes` on the same disk (bench_write's raw reference)."""
    from benchmarks.bench_write import timed_raw

    return timed_raw(blob[:nbytes], root)


def scratch_dir() -> str:
    """bench_out/ of the checkout (ignored by git): the disk the store would live on in a checkout."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench_out")
    os.makedirs(path, exist_ok=True)
    return path


def hash_rates(blob: np.ndarray, algorithms: list[str]) -> dict[str, float]:
    """Bytes/s of each checksum over the same buffer on one thread (what one core of the writer can hash)."""
    from featstore.io.hashing import digest_bytes

    out = {}
    for name in algorithms:
        t0 = time.perf_counter()
        digest_bytes(blob.data, name)
        out[name] = len(blob) / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=256, help="MiB of float16 features per case (default 256)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", default="1,4,48")
    ap.add_argument("--formats", default="zarr,hdf5")
    ap.add_argument("--variants", default="float16,int8,int8/device",
                    help="float16, int8 (coded on the writer thread), int8/device (coded by torch before the copy)")
    ap.add_argument("--hashes", default="sha256,blake3")
    ap.add_argument("--threads", default=None,
                    help="io threads per case (default: featstore's default); a list (1,2,4,8) sweeps them on "
                         "zarr float16 at 4 layers")
    ap.add_argument("--stage", default="all", choices=["all", "writer"],
                    help="all: time every step after the model; writer: only the host's part after the device's "
                         "(batches already kept, cast and copied: what bounds a GPU run)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir under bench_out/ of the checkout)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true", help="at most 2 MiB per case, one repetition, sha256 only: checks "
                    "the script runs")
    a = ap.parse_args()
    if a.smoke:
        a.mb, a.reps, a.hashes = min(a.mb, 2), 1, "sha256"
    layer_counts = [int(x) for x in a.layers.split(",")]
    threads_list = [int(x) for x in a.threads.split(",")] if a.threads else [default_io_threads()]
    cases = [(fmt, L, v, h, threads_list[0]) for L in layer_counts for fmt in a.formats.split(",")
             for v in a.variants.split(",") for h in a.hashes.split(",")]
    if len(threads_list) > 1:
        cases += [("zarr", 4, "float16", h, t) for h in a.hashes.split(",") for t in threads_list[1:]]
    work = tempfile.mkdtemp(prefix="bench-pipeline-", dir=a.dir or scratch_dir())
    inputs = {L: synthetic_batches(max(1, int(a.mb * MiB) // (L * HIDDEN * 2)), 16, 128) for L in layer_counts}
    blob = np.random.default_rng(0).integers(0, 255, int(a.mb * MiB * 1.1) + MiB, dtype=np.uint8)
    runs: dict[str, dict] = {}
    hashing: dict[str, list[float]] = {}
    try:
        for rep in range(a.reps):
            for name, rate in hash_rates(blob, a.hashes.split(",")).items():
                hashing.setdefault(name, []).append(rate)
            for fmt, L, variant, h, threads in cases:
                key = f"{fmt} {variant} L={L} {h} t={threads}"
                encoding, _, where = variant.partition("/")
                case_dir = os.path.join(work, "case")
                shutil.rmtree(case_dir, ignore_errors=True)
                os.makedirs(case_dir)
                sec, nbytes, tokens = run_pipeline(case_dir, fmt, L, encoding, where or "host", h, threads, inputs[L],
                                                   a.stage)
                shutil.rmtree(case_dir, ignore_errors=True)
                raw = raw_write(work, blob, min(nbytes, len(blob)))
                r = runs.setdefault(key, {"format": fmt, "layers": L, "variant": variant, "hash": h,
                                          "threads": threads, "tokens": tokens, "bytes": nbytes, "seconds": [],
                                          "raw_seconds": []})
                r["seconds"].append(sec)
                r["raw_seconds"].append(raw * nbytes / min(nbytes, len(blob)))
                print(f"rep {rep + 1} {key}: {tokens / sec:,.0f} tok/s, {nbytes / sec / 2**20:,.0f} MiB/s, "
                      f"raw {nbytes / r['raw_seconds'][-1] / 2**20:,.0f} MiB/s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for key, r in runs.items():
        s, raw = statistics.median(r["seconds"]), statistics.median(r["raw_seconds"])
        ratios = [rs / ps for ps, rs in zip(r["seconds"], r["raw_seconds"])]
        rows.append({**r, "tokens_per_s": r["tokens"] / s, "bytes_per_s": r["bytes"] / s,
                     "raw_bytes_per_s": r["bytes"] / raw, "x_raw": statistics.median(ratios),
                     "x_xxlarge_estimate": r["tokens"] / s / XXLARGE_TOKENS_PER_S})
    print(f"\npipeline ceiling (stage: {a.stage}), hidden {HIDDEN}, {a.mb:g} MiB of float16 features per case, medians of {a.reps}; "
          f"{os.cpu_count()} cores, {platform.platform()}")
    print(f"FLOP-based DeBERTa-v2-xxlarge estimate (40% of an H100's dense bf16): {XXLARGE_TOKENS_PER_S:,.0f} tok/s")
    print("one core hashing the same bytes: " + ", ".join(f"{k} {statistics.median(v) / MiB:,.0f} MiB/s"
                                                            for k, v in hashing.items()))
    print(f"{'case':<42}{'tok/s':>12}{'MiB/s':>9}{'raw MiB/s':>11}{'x raw':>7}{'x xxlarge':>11}")
    for r in rows:
        name = f"{r['format']} {r['variant']} L={r['layers']} {r['hash']} t={r['threads']}"
        print(f"{name:<42}{r['tokens_per_s']:>12,.0f}{r['bytes_per_s'] / MiB:>9,.0f}"
              f"{r['raw_bytes_per_s'] / MiB:>11,.0f}{r['x_raw']:>7.2f}{r['x_xxlarge_estimate']:>11.2f}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"stage": a.stage, "hidden": HIDDEN, "mb_per_case": a.mb, "reps": a.reps,
                       "xxlarge_estimate_tokens_per_s": XXLARGE_TOKENS_PER_S, "cases": rows,
                       "hash_bytes_per_s_one_core": hashing,
                       "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}}, f, indent=1)


if __name__ == "__main__":
    main()
