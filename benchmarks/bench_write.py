"""Disk-bound case: the segment writer vs the disk's own sequential write speed, per codec.

Keeping every layer makes extraction write-heavy. This measures the writer alone (assemble, write every
chunk, checksum, commit) on real hidden states, next to a plain sequential write of the same bytes
(`ndarray.tofile` + fsync), and each codec's size ratio. Target (issue 6): writer >= 0.80 x raw.

    python benchmarks/bench_write.py --store demo_out/bbc --mb 1024 --reps 3 --json bench_out/write.json
"""
from __future__ import annotations

import argparse
import hashlib
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

import featstore  # noqa: E402
from featstore.store import local_backend  # noqa: E402
from featstore.extract.writer import SegmentJob, assemble  # noqa: E402

CODECS = [("zarr", "none"), ("zarr", "zstd"), ("zarr", "blosc-zstd"), ("zarr", "blosc-lz4"),
          ("hdf5", "none"), ("hdf5", "lzf")]


def real_tokens(store_path: str, n_tokens: int) -> tuple[np.ndarray, list[int]]:
    """(n_tokens, D) per layer of real features, tiled if the store is smaller."""
    s = featstore.open_store(store_path)
    sp = s.split(s.splits[0])
    n = min(n_tokens, sp.n_tokens)
    feats = [sp.tokens(k, 0, n) for k in s.layers]
    return np.stack(feats, axis=0), s.layers  # (L, n, D)


def make_job(feats: np.ndarray, layers: list[int], tokens: int, per_example: int = 256) -> SegmentJob:
    L, n, D = feats.shape
    reps = -(-tokens // n)
    n_ex = tokens // per_example
    job = SegmentJob("train", "s00000", 0, layers, "float16")
    batch = {"lengths": np.full(n_ex, per_example), "rows": np.arange(n_ex), "ids": [str(i) for i in range(n_ex)],
             "input_ids": np.zeros(n_ex * per_example, dtype=np.int32)}
    for j, k in enumerate(layers):
        tok = np.tile(feats[j], (reps, 1))[:n_ex * per_example].astype(np.float16)
        batch[f"L{k}/tokens"] = tok
        batch[f"L{k}/cls"] = tok[::per_example]
        batch[f"L{k}/mean"] = tok[::per_example]
    job.batches.append(batch)
    return job


def timed_write(fmt: str, codec: str, job: SegmentJob, root: str, chunk_bytes: int) -> tuple[float, int]:
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    backend = local_backend(root if fmt == "zarr" else os.path.join(root, "s.h5"), fmt)
    os.sync()
    t0 = time.perf_counter()
    arrays = assemble(job)
    pending = backend.write_segment("train", "s00000", arrays, codec, chunk_bytes)
    record = backend.commit_segment(pending, {})
    os.sync()
    return time.perf_counter() - t0, sum(f["size"] for f in record["files"].values())


def timed_raw(data: np.ndarray, root: str) -> float:
    path = os.path.join(root, "raw.bin")
    os.sync()
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        data.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    t = time.perf_counter() - t0
    os.remove(path)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="a store with real features (e.g. the demo's)")
    ap.add_argument("--mb", type=int, default=1024, help="MiB of token features per timed write")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--chunk-mb", type=float, default=4.0)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir on the same disk as --store)")
    ap.add_argument("--codecs", default=None, help="comma-separated subset, e.g. zarr/none,hdf5/none (default: all)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    feats, layers = real_tokens(args.store, 200_000)
    D = feats.shape[2]
    tokens = args.mb * (1 << 20) // (2 * D * len(layers))
    job = make_job(feats, layers, tokens)
    raw_bytes = sum(v.nbytes for k, v in assemble(job).items())
    work = tempfile.mkdtemp(prefix="bench-write-", dir=args.dir or os.path.dirname(os.path.abspath(args.store)))
    blob = np.concatenate([v.reshape(-1).view(np.uint8) for v in assemble(job).values()])
    results = {"raw": [], "sha256 (one core)": []}
    sizes = {}
    for rep in range(args.reps):
        results["raw"].append(raw_bytes / timed_raw(blob, work))
        t0 = time.perf_counter()
        hashlib.sha256(blob.data).hexdigest()  # what the writer must also do to every byte: the manifest's checksums
        results["sha256 (one core)"].append(raw_bytes / (time.perf_counter() - t0))
        for fmt, codec in [c for c in CODECS if args.codecs is None or "/".join(c) in args.codecs.split(",")]:
            t, size = timed_write(fmt, codec, job, os.path.join(work, "w"), int(args.chunk_mb * (1 << 20)))
            results.setdefault(f"{fmt}/{codec}", []).append(raw_bytes / t)
            sizes[f"{fmt}/{codec}"] = size
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1] / 2**20:,.0f} MiB/s" for k, v in results.items()),
              file=sys.stderr)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{raw_bytes / 2**20:,.0f} MiB per write (layers {layers}, hidden {D}, float16), {args.reps} reps, "
          f"fsync included; {platform.platform()}")
    print(f"{'writer':<18}{'MiB/s (median)':>16}{'x raw write':>13}{'size ratio':>12}")
    for k, v in med.items():
        ratio = raw_bytes / sizes[k] if k in sizes else 1.0
        print(f"{k:<18}{v / 2**20:>16,.0f}{v / med['raw']:>13.2f}{ratio:>12.2f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"bytes": raw_bytes, "layers": layers, "hidden": D, "reps": args.reps,
                       "runs_bytes_per_s": results, "median_bytes_per_s": med,
                       "compression_ratio": {k: raw_bytes / v for k, v in sizes.items()},
                       "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}}, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
