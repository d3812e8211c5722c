"""Try head settings on one store: each variant trained with several seeds, chosen by dev, test shown beside.

    python benchmarks/sweep_heads.py --store STORE --label-column topic \
        --variant '{}' --variant '{"lr": 0.002}' --variant '{"layers": "4,5,6"}' --json bench_out/sweep.json

Each --variant is JSON of `heads.config.TrainConfig` fields over the defaults given here (ytuning, label-prior
init, 10 epochs, no early stopping). Select by the dev column; the test column is for reporting only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import heads  # noqa: E402
from heads.config import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--label-column", required=True)
    ap.add_argument("--variant", action="append", default=None, help="JSON of TrainConfig fields (repeatable)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    base = dict(head="ytuning", store=a.store, label_column=a.label_column, epochs=10, patience=None,
                label_init="prior", seeds=[int(s) for s in a.seeds.split(",")], progress=False, overwrite=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sweep-") as work:
        for v in a.variant or ["{}"]:
            kw = json.loads(v)
            r = heads.train(TrainConfig(**{**base, **kw, "out": os.path.join(work, "run")}))
            dev, test = r.summary[r.splits["dev"]][r.primary_metric], r.summary[r.splits["test"]][r.primary_metric]
            rows.append({"variant": kw, "dev": dev, "test": test, "seconds_per_epoch": r.seconds_per_epoch})
            print(f"{json.dumps(kw):<32} dev {dev['mean']:.4f} ± {dev['std']:.4f}   test {test['mean']:.4f} ± "
                  f"{test['std']:.4f}   {r.seconds_per_epoch:.2f} s/epoch", flush=True)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"store": a.store, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
