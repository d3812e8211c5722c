"""Token context in the head (`--context-layers`, `--context`), stride windows and tuned top layers, against full
fine-tuning measured on the same splits (`vs_finetune_tasks.py`'s JSON: fine-tuning is not re-run here).

    python benchmarks/context_heads.py --store stores/wnut --finetune benchmarks/results/vs_finetune_tasks_wnut.json \\
        --runs runs/ctx-wnut --variant "k0=--context-layers 0" --variant "lstm2=--context-layers 2 --context lstm" \\
        --train-args "--task token --layers 3,5,6 --epochs 10 --lr 2e-3" --seeds 0,1,2 \\
        --out benchmarks/results/context_wnut.json

Each variant is `heads train ytuning --store S <train-args> <variant args> --seeds ...` (the CLI, in a
subprocess), its head written under --runs/<variant>; a variant whose head directory is complete is
read back, not re-trained (the script resumes). Reports dev and test of the primary metric (mean +- std over
seeds), % of fine-tuning's test score, and seconds per epoch against fine-tuning's.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time


def run_variant(store: str, out: str, args: list[str], seeds: str) -> dict:
    if not os.path.isfile(os.path.join(out, "metrics.json")):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "heads", "train", "ytuning", "--store", store, "--out", out, "--quiet",
                        "--overwrite", *args, "--seeds", seeds], check=True)
        print(f"trained {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    with open(os.path.join(out, "head.json")) as f:
        meta = json.load(f)
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    primary, splits = m["primary_metric"], m["splits"]
    return {"args": args, "primary": primary, "architecture": meta["architecture"],
            "dev": m["summary"][splits["dev"]], "test": m["summary"][splits["test"]],
            "seeds": {s: {"dev": v[splits["dev"]][primary], "test": v[splits["test"]][primary],
                          "best_epoch": v["best_epoch"], "seconds_per_epoch": v["seconds_per_epoch"]}
                      for s, v in m["seeds"].items()},
            "decisions": meta.get("decisions"), "trainable_parameters": meta["trainable_parameters"],
            "seconds_per_epoch": meta["seconds_per_epoch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--finetune", required=True, help="vs_finetune_tasks.py JSON measured on the same splits")
    ap.add_argument("--runs", required=True, help="directory for the heads (one per variant)")
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME=OPTIONS: `heads train` options of one variant, as on a command line")
    ap.add_argument("--train-args", default="", help="options every variant shares, as on a command line")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.finetune) as f:
        ft = next(r for r in json.load(f)["rows"] if r["method"] == "finetune")
    shared = shlex.split(a.train_args)
    res = json.load(open(a.out)) if os.path.isfile(a.out) else {}
    res.update({"store": a.store, "finetune": {"test": ft["test"], "primary": ft["primary"],
                                               "seconds_per_epoch": ft["seconds_per_epoch"]}})
    rows = res.setdefault("variants", {})
    for spec in a.variant:
        name, _, args = spec.partition("=")
        rows[name] = run_variant(a.store, os.path.join(a.runs, name), shared + shlex.split(args),
                                 a.seeds)
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    p = ft["primary"]
    ftv = ft["test"][p]
    print(f"\n{'variant':<14}{'dev ' + p:>16}{'test ' + p:>18}{'% of FT':>9}{'s/epoch':>9}{'x FT epoch':>11}")
    print(f"{'finetune':<14}{'':>16}{ftv:>18.4f}{100.0:>8.1f}%{ft['seconds_per_epoch']:>9.1f}{1.0:>11.3f}")
    for name, r in rows.items():
        d, t = r["dev"][p], r["test"][p]
        print(f"{name:<14}{d['mean']:>9.4f}+-{d['std']:.4f}{t['mean']:>11.4f}+-{t['std']:.4f}"
              f"{100 * t['mean'] / ftv:>8.1f}%{r['seconds_per_epoch']:>9.1f}"
              f"{r['seconds_per_epoch'] / ft['seconds_per_epoch']:>11.3f}")


if __name__ == "__main__":
    main()
