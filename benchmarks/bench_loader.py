"""heads' batch loader: one shuffled training epoch of batches, before and after it moved onto featstore's batch
plan and reader (`featstore.loading.batches`): seconds per epoch, batches, and padded tokens per real token.

    python benchmarks/bench_loader.py --store demo_out/bbc --reps 5 --json bench_out/loader.json

Run it from a checkout of each version (the script speaks both loaders' APIs) and compare the JSONs, or let
`--before DIR` run DIR's code (a checkout of the earlier commit) in a subprocess alternately with this one's, rep
by rep, so both see the same machine load; the JSON then holds both and their ratios (medians of the reps).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CASES = [("tokens, in RAM", "tokens", True), ("tokens, streamed", "tokens", False), ("pooled", "pooled", True)]


def features(split, reads: str, layers, in_ram: bool):
    try:  # this version: featstore's reader under heads' Features
        from heads.data import Features

        return Features.from_split(split, reads, layers, "mean", in_ram=in_ram)
    except ImportError:  # the loader before: heads' own sources
        from heads.data import PooledSource, StoreTokens

        if reads == "tokens":
            return StoreTokens(split, layers, in_ram)
        return PooledSource.from_split(split, layers, "mean")


def one_round(store_path: str, split: str, batch_size: int, epochs: int) -> dict:
    """Seconds of `epochs` shuffled epochs per case (features already in RAM or opened), batches, padding."""
    import featstore
    from heads.data import Loader

    out = {}
    with featstore.open_store(store_path) as st:
        sp = st.split(split)
        for name, reads, in_ram in CASES:
            src = features(sp, reads, st.layers, in_ram)
            loader = Loader(src, None, batch_size, shuffle=True, seed=0)
            n_batches, real, padded = 0, 0, 0
            t0 = time.perf_counter()
            for e in range(1, epochs + 1):
                for b in loader.epoch(e):
                    n_batches += 1
                    if b.mask is not None:
                        real, padded = real + int(b.mask.sum()), padded + b.mask.size
            out[name] = {"seconds_per_epoch": (time.perf_counter() - t0) / epochs, "batches": n_batches / epochs,
                         "padded_per_real": padded / real if real else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per timed round")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--before", help="a checkout of the earlier loader, run alternately with this one")
    ap.add_argument("--json")
    ap.add_argument("--round", action="store_true", help=argparse.SUPPRESS)  # one round, JSON on stdout
    a = ap.parse_args()
    if a.round:
        print(json.dumps(one_round(a.store, a.split, a.batch_size, a.epochs)))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"after": here, **({"before": os.path.abspath(a.before)} if a.before else {})}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for rep in range(a.reps):
        for label, tree in trees.items():
            cmd = [sys.executable, os.path.join(here, "benchmarks", "bench_loader.py"), "--round", "--store",
                   os.path.abspath(a.store), "--split", a.split, "--batch-size", str(a.batch_size),
                   "--epochs", str(a.epochs)]
            res = subprocess.run(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": tree}, check=True,
                                 capture_output=True, text=True)
            runs[label].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"rep {rep} {label}: " + ", ".join(f"{k} {v['seconds_per_epoch']:.3f} s" for k, v in
                                                     runs[label][-1].items()), flush=True)
    summary = {}
    for name, _, _ in CASES:
        row = {}
        for label in trees:
            vals = [r[name]["seconds_per_epoch"] for r in runs[label]]
            row[label] = {"median_seconds_per_epoch": statistics.median(vals), "seconds": vals,
                          "batches": runs[label][0][name]["batches"],
                          "padded_per_real": runs[label][0][name]["padded_per_real"]}
        if "before" in row:  # per-rep ratios, side by side in time
            ratios = [b / max(x, 1e-9) for b, x in zip(row["before"]["seconds"], row["after"]["seconds"])]
            row["speedup_after_vs_before"] = statistics.median(ratios)
        summary[name] = row
    for name, row in summary.items():
        line = ", ".join(f"{k} {v['median_seconds_per_epoch']:.3f} s/epoch ({v['batches']:.0f} batches, padded/real "
                         f"{v['padded_per_real'] or 0:.3f})" for k, v in row.items() if isinstance(v, dict))
        ratio = f"; after is {row['speedup_after_vs_before']:.2f}x as fast" if "speedup_after_vs_before" in row else ""
        print(f"{name}: {line}{ratio}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                   "python": platform.python_version()},
                       "store": a.store, "split": a.split, "batch_size": a.batch_size, "epochs": a.epochs,
                       "reps": a.reps, "cases": summary, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
