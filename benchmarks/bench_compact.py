"""Compact stores: bytes per token, conversion time and head accuracy per encoding, side by side.

Skeleton for issue 12's benchmark (not yet run at scale, not yet in RESULTS.md): converts one existing store to
each encoding with `featstore convert` (so every row starts from the same float16 features), then trains
Y-Tuning and a linear probe on each, several seeds, and prints one table. Extraction throughput at each
encoding and projections (`--project`) are still to add.

    python benchmarks/bench_compact.py STORE --label-column topic [--encodings float16,int8,fp8] [--seeds 0,1,2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--label-column", required=True)
    ap.add_argument("--encodings", default="float16,int8,fp8")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--work", default=None, help="where converted stores go (default: a temporary directory)")
    args = ap.parse_args()

    from featstore import open_store
    from featstore.convert import convert
    from featstore.verify import info
    from heads import TrainConfig, train

    seeds = [int(s) for s in args.seeds.split(",")]
    work = args.work or tempfile.mkdtemp(prefix="bench-compact-")
    with open_store(args.store) as src:
        n_tokens = sum(src.split(s).n_tokens for s in src.splits)
    rows = []
    for enc in args.encodings.split(","):
        dst = os.path.join(work, enc)
        t0 = time.perf_counter()
        convert(args.store, dst, enc)
        seconds = time.perf_counter() - t0
        d = info(dst)
        row = {"encoding": enc, "bytes/token": d["bytes_per_token"], "store MiB": d["bytes"] / 2**20,
               "convert tok/s": n_tokens / seconds}
        for head, extra in (("ytuning", {}), ("linear", {"pooling": "mean"})):
            r = train(TrainConfig(head, store=dst, label_column=args.label_column, out=os.path.join(work, f"{enc}-{head}"),
                                  seeds=seeds, epochs=args.epochs, progress=False, **extra))
            acc = r.summary["test"]["accuracy"]
            row[head] = f"{100 * acc['mean']:.2f} +- {100 * acc['std']:.2f}"
        rows.append(row)
    base = rows[0]["bytes/token"]
    print("| encoding | bytes/token | x float16 | store MiB | convert tok/s | Y-Tuning acc | linear acc |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoding']} | {r['bytes/token']} | {r['bytes/token'] / base:.3f} | {r['store MiB']:.1f} | "
              f"{r['convert tok/s']:,.0f} | {r['ytuning']} | {r['linear']} |")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
