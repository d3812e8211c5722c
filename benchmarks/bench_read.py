"""Read-back: heads batches streamed from a store vs reading the same bytes as raw files; time waiting for data.

1. One epoch of `heads` batches (B, T, L, D) streamed from the store (split not held in RAM) vs a plain read of
   the same token-feature files, side by side with the same epoch read through zarr-python (featstore's reads
   before its raw chunk reader); and the epoch's window reads alone (featstore's part, no batches
   assembled). Target: >= 0.80 x the raw read rate. Page cache dropped before each read when
   the machine allows it (root + /proc/sys/vm/drop_caches), else every read is warm.
2. A Y-Tuning training epoch with the split cached in RAM: the fraction of the epoch spent waiting for the next
   batch. Goal: < 5%.

    python benchmarks/bench_read.py --store demo_out/bbc --reps 3 --json bench_out/read.json
    python benchmarks/bench_read.py --synthetic-mb 1024 --reps 3 --json benchmarks/results/read_pipeline.json

`--synthetic-mb N` writes a store of N MiB of synthetic float16 features (4 layers of a 1536-wide model, through
featstore's own writer, `bench_pipeline.py`) under bench_out/ and reads that: no model or extraction needed.
It skips part 2 (a synthetic store has no labels).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import featstore  # noqa: E402
from featstore.store.raw_chunks import RawChunks as _RAW  # noqa: E402
from heads.data import Features, Loader  # noqa: E402


def drop_caches(warm: bool = False) -> bool:
    if warm:
        return False
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def token_files(store, split: str, layers) -> list[str]:
    sp = store.split(split)
    files = []
    for seg in sp.segments:
        files += [os.path.join(store.path, p) for p in seg["files"]
                  if any(f"/L{k}/tokens/" in p for k in layers)]
    return files


def raw_read(files: list[str]) -> tuple[float, int]:
    t0, n = time.perf_counter(), 0
    for p in files:
        with open(p, "rb") as f:
            n += len(f.read())
    return time.perf_counter() - t0, n


def synthetic_store(mb: float, where: str) -> str:
    """A zarr store of `mb` MiB of float16 token features written by featstore's writer."""
    from bench_pipeline import run_pipeline, synthetic_batches

    os.makedirs(where, exist_ok=True)
    batches = synthetic_batches(int(mb * (1 << 20)) // (4 * 1536 * 2), 16, 128)
    run_pipeline(where, "zarr", 4, "float16", "host", "sha256", 4, batches, stage="all")
    return os.path.join(where, "store")


def zarr_python_reads(on: bool) -> None:
    """Route featstore's array reads through zarr-python (on) or its raw chunk reader (off, the default)."""
    from featstore.store import zarr_backend

    zarr_backend.RawChunks = _ZarrPython if on else _RAW


class _ZarrPython:
    @staticmethod
    def open(path: str):
        return None


def window_reads(store, split: str, layers, batch_size: int) -> float:
    """The reads of one streamed epoch alone: the same windows in the same order, no batches assembled."""
    src = Features.from_split(store.split(split), "tokens", layers, in_ram=False)
    loader = Loader(src, None, batch_size, shuffle=True, seed=0, dtype=np.float16)
    t0 = time.perf_counter()
    for window, _ in loader.plan(0):
        src.reader.read(window)
    return time.perf_counter() - t0


def streamed_epoch(store, split: str, layers, batch_size: int) -> float:
    src = Features.from_split(store.split(split), "tokens", layers, in_ram=False)
    loader = Loader(src, None, batch_size, shuffle=True, seed=0, dtype=np.float16)
    t0 = time.perf_counter()
    for _ in loader.epoch(1):
        pass
    return time.perf_counter() - t0


def training_wait_fraction(store, split: str, layers, label: str, batch_size: int) -> tuple[float, float]:
    import torch

    from heads.nets import build_head
    from heads.runtime import torch_threads
    from heads.spec import HeadSpec
    from heads.tasks.classification import Classification

    sp = store.split(split)
    src = Features.from_split(sp, "tokens", layers, in_ram=True)
    y = sp.targets(label)
    spec = HeadSpec(kind="ytuning", task="classification", n_outputs=int(y.max()) + 1,
                    hidden_size=store.hidden_size, n_layers_in=len(layers))
    model = build_head(spec)
    task = Classification(label, [str(k) for k in range(spec.n_outputs)])
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    loader = Loader(src, y, batch_size, shuffle=True, seed=0)
    with torch_threads(None):
        wait = 0.0
        t0 = time.perf_counter()
        it = iter(loader.epoch(1))
        while True:
            tw = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                break
            wait += time.perf_counter() - tw
            out = model(torch.from_numpy(b.x), torch.from_numpy(b.mask))
            loss = task.loss(out, torch.from_numpy(b.y), None, spec)
            opt.zero_grad()
            loss.backward()
            opt.step()
        total = time.perf_counter() - t0
    return wait / total, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None, help="a store with real features (e.g. the demo's)")
    ap.add_argument("--synthetic-mb", type=float, default=None, help="instead of --store: write and read a "
                    "synthetic store of this many MiB")
    ap.add_argument("--split", default="train")
    ap.add_argument("--label-column", default="topic")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warm", action="store_true", help="keep the page cache (every read warm): measures the "
                    "readers' own cost rather than the disk's")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if (a.store is None) == (a.synthetic_mb is None):
        ap.error("give --store or --synthetic-mb")
    work = None
    if a.synthetic_mb:
        import shutil
        import tempfile

        from bench_pipeline import scratch_dir

        work = tempfile.mkdtemp(prefix="bench-read-", dir=scratch_dir())
        a.store = synthetic_store(a.synthetic_mb, work)
    try:
        store = featstore.open_store(a.store)
        layers = store.layers
        files = token_files(store, a.split, layers)
        runs = {"raw read": [], "store reads": [], "store reads, zarr-python": [], "streamed epoch": [],
                "streamed epoch, zarr-python reads": []}
        cold = False
        nbytes = 0
        for rep in range(a.reps):
            cold = drop_caches(a.warm)
            t, nbytes = raw_read(files)
            runs["raw read"].append(nbytes / t)
            variants = [("store reads", False, window_reads), ("store reads, zarr-python", True, window_reads),
                        ("streamed epoch", False, streamed_epoch),
                        ("streamed epoch, zarr-python reads", True, streamed_epoch)]
            for key, via_zarr, fn in variants[rep % 4:] + variants[:rep % 4]:  # no variant always runs first
                cold = drop_caches(a.warm) and cold
                zarr_python_reads(via_zarr)
                with featstore.open_store(a.store) as s:
                    runs[key].append(nbytes / fn(s, a.split, layers, a.batch_size))
                zarr_python_reads(False)
            print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1] / 2**20:,.0f} MiB/s" for k, v in runs.items()),
                  file=sys.stderr)
        fractions = [] if work else [training_wait_fraction(store, a.split, layers, a.label_column, a.batch_size)
                                     for _ in range(a.reps)]
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratios = {k: statistics.median(r / raw for r, raw in zip(v, runs["raw read"])) for k, v in runs.items()}
    wait = statistics.median(f for f, _ in fractions) if fractions else None
    print(f"\n{a.store} [{a.split}]: {nbytes / 2**20:,.0f} MiB of token features, layers {layers}, "
          f"{'cold (page cache dropped)' if cold else 'warm page cache'}; {platform.platform()}")
    print(f"{'read':<36}{'MiB/s (median)':>16}{'x raw (median of ratios)':>26}")
    for k, v in med.items():
        print(f"{k:<36}{v / 2**20:>16,.0f}{ratios[k]:>26.2f}")
    if fractions:
        print(f"Y-Tuning epoch with the split in RAM: {100 * wait:.1f}% of "
              f"{statistics.median(t for _, t in fractions):.1f} s spent waiting for data (median of {a.reps})")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"store": a.store, "bytes": nbytes, "cold": cold, "runs_bytes_per_s": runs,
                       "median_bytes_per_s": med, "streamed_over_raw": ratios["streamed epoch"],
                       "median_ratios_to_raw": ratios, "synthetic_mb": a.synthetic_mb,
                       "wait_fraction_in_ram": wait, "wait_fractions": fractions,
                       "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}}, f, indent=1)


if __name__ == "__main__":
    main()
