"""`heads sweep`: epoch time of K heads per pass vs K separate runs, and the dev-picked config's quality.

1. Timing. One training epoch of K Y-Tuning heads (K configs differing in lr) fed from one read of each batch
   (`heads.trainer.fit_group`), against K separate one-head runs (each its own pass over the store, as K
   `heads train` runs do), K = 1, 4, 8, side by side in one run; the split streamed from the store
   (`--max-memory 0`) and held in RAM. Medians of --repeats. Targets: streamed, 8 heads per pass <= 2.5x one
   head's epoch; in RAM, no slower than the separate runs.
2. Quality (--quality): `heads sweep` over a small grid, 3 seeds, the dev-picked config's test score against
   `heads train` with the default config, per store.

    python benchmarks/bench_sweep.py --store demo_out/bbc --label-column topic --json bench_out/sweep.json \
        --quality demo_out/bbc --quality bench_out/headlines
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from featstore.store import open_store  # noqa: E402
from heads import TrainConfig, train  # noqa: E402
from heads.sweep import SweepConfig, sweep  # noqa: E402
from heads.train import build_member, plan_run  # noqa: E402
from heads.trainer import fit_group  # noqa: E402

LRS = [3e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 7e-3, 1e-2]


def epoch_seconds(store, base: dict, lrs: list[float], max_memory: int) -> tuple[float, float]:
    """Wall and CPU time (this process, all threads) of one epoch training len(lrs) heads from one pass (no dev
    scoring). CPU time is what a shared machine's other jobs disturb least."""
    shared: dict = {}
    plans = [plan_run(TrainConfig(**base, lr=lr, out="-", epochs=1, dev_split=None, test_split=None,
                                  max_memory=max_memory, progress=False), store, shared) for lr in lrs]
    loaders = plans[0].loaders(0)
    members = [build_member(p, 0, loaders, []) for p in plans]
    t0, c0 = time.perf_counter(), time.process_time()
    fit_group(members, loaders, plans[0].gold, progress=False, final_splits=[])
    return time.perf_counter() - t0, time.process_time() - c0


def timing(a: argparse.Namespace) -> dict:
    store = open_store(a.store)
    base = dict(head="ytuning", store=a.store, label_column=a.label_column, layers=a.layers, d_head=a.d_head,
                n_layers=1, n_heads=4, batch_size=32)
    ks = [int(k) for k in a.ks.split(",")]
    rows = []
    for mode, mm in (("streamed", 0), ("in RAM", 1 << 40)):
        times: dict[str, list[tuple[float, float]]] = {}
        for rep in range(a.repeats):  # grouped and separate interleaved: load changes hit both alike
            for k in ks:
                times.setdefault(f"group{k}", []).append(epoch_seconds(store, base, LRS[:k], mm))
                sep = [epoch_seconds(store, base, [lr], mm) for lr in LRS[:k]]
                times.setdefault(f"sep{k}", []).append((sum(w for w, _ in sep), sum(c for _, c in sep)))
                (gw, gc), (sw, sc) = times[f"group{k}"][-1], times[f"sep{k}"][-1]
                print(f"{mode} rep {rep} K={k}: per pass {gw:.2f} s wall {gc:.2f} s CPU; separate {sw:.2f} s wall "
                      f"{sc:.2f} s CPU", flush=True)

        def med(key: str, j: int) -> float:
            return statistics.median(t[j] for t in times[key])

        for k in ks:
            row = {"mode": mode, "K": k, "runs": {"per_pass": times[f"group{k}"], "separate": times[f"sep{k}"]}}
            for j, clock in enumerate(("wall", "cpu")):
                g, s = med(f"group{k}", j), med(f"sep{k}", j)
                row.update({f"per_pass_{clock}_s": g, f"separate_{clock}_s": s,
                            f"x_one_head_{clock}": g / med("group1", j), f"speedup_{clock}": s / g})
            rows.append(row)
    store.close()
    return {"store": a.store, "layers": a.layers, "d_head": a.d_head, "rows": rows}


GRID = ["lr=3e-4,1e-3,3e-3", "d_head=64,128,256"]


def quality(path: str, label_column: str, head: str, epochs: int, work: str) -> dict:
    seeds = [0, 1, 2]
    fixed = dict(head=head, store=path, label_column=label_column, seeds=seeds, epochs=epochs)
    t0 = time.perf_counter()
    r = sweep(SweepConfig(fixed=fixed, grid=[*GRID, f"layers={a_layers(head)}"], out=os.path.join(work, "sweep"),
                          progress=False))
    sweep_s = time.perf_counter() - t0
    d = train(TrainConfig(head, store=path, label_column=label_column, seeds=seeds, epochs=epochs,
                          out=os.path.join(work, "default"), progress=False))
    pm = r.primary_metric
    dc = TrainConfig(head, store=path)
    return {"store": path, "head": head, "grid": GRID, "seeds": seeds, "epochs": epochs, "picked": r.picked,
            "picked_dev": r.rows[0].dev, "picked_test": r.test[pm],
            "default": {k: getattr(dc, k) for k in ("lr", "d_head", "layers")},
            "default_dev": d.summary["validation"][pm], "default_test": d.summary["test"][pm],
            "metric": pm, "sweep_seconds": sweep_s, "configs": len(r.rows)}


def a_layers(head: str) -> str:
    return "all|-1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="store for the timing part")
    ap.add_argument("--label-column", default="topic")
    ap.add_argument("--layers", default="all")
    ap.add_argument("--d-head", type=int, default=32)
    ap.add_argument("--ks", default="1,4,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quality", action="append", default=[], help="store for the quality part (repeatable)")
    ap.add_argument("--quality-head", default="mlp")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
           "threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    if a.store:
        out["timing"] = timing(a)
        for clock in ("wall", "cpu"):
            print(f"\n{clock} time{'mode':>6}{'K':>3}{'per pass s':>12}{'separate s':>12}{'x one head':>12}"
                  f"{'vs separate':>13}")
            for r in out["timing"]["rows"]:
                print(f"{'':<9}{r['mode']:<10}{r['K']:>3}{r[f'per_pass_{clock}_s']:>12.2f}"
                      f"{r[f'separate_{clock}_s']:>12.2f}{r[f'x_one_head_{clock}']:>12.2f}{r[f'speedup_{clock}']:>12.2f}x")
    out["quality"] = []
    for path in a.quality:
        with tempfile.TemporaryDirectory() as work:
            q = quality(path, a.label_column, a.quality_head, a.epochs, work)
        out["quality"].append(q)
        print(f"\n{path} ({q['head']}, {q['configs']} configs x 3 seeds, {q['sweep_seconds']:.0f} s): picked "
              f"{q['picked']}: dev {q['picked_dev']['mean']:.4f}, test {q['metric']} {q['picked_test']['mean']:.4f} "
              f"± {q['picked_test']['std']:.4f}; default config: dev {q['default_dev']['mean']:.4f}, test "
              f"{q['default_test']['mean']:.4f} ± {q['default_test']['std']:.4f}")
    out["load_after"] = os.getloadavg()
    if a.json:
        from benchmarks import write_json

        write_json(a.json, out)


if __name__ == "__main__":
    main()
