"""Robustness to perturbed inputs: accuracy on noisy copies of the test texts and its drop from clean, per method.

The paper claims Y-Tuning is more robust than fine-tuning; this measures it for us. Perturbed copies of the test
split (deterministic character noise and word dropout at a few rates, seeded by example id) are extracted as
extra splits of the same store as train/validation/test, in the one extraction; every method trains once per
seed on the clean training split (dev selects the epoch, as in vs_finetune.py) and is evaluated on the clean
test split and on each perturbed copy.

    python benchmarks/robustness.py --limit 100 --max-length 128 --epochs 10 --seeds 0,1,2 \
        --json benchmarks/robustness.json

Methods: full fine-tuning, LoRA r=8 (needs `peft`), linear probe and Y-Tuning from the store, Y-Tuning with the
top 2 layers tuned from the store. Each (method, seed) runs in its own process.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import string
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METHODS = ["full fine-tuning", "LoRA r=8", "linear probe (store)", "Y-Tuning (store)", "Y-Tuning top 2 (store)"]
PERTURBATIONS = [("char", 0.05), ("char", 0.1), ("char", 0.2), ("drop", 0.1), ("drop", 0.2), ("drop", 0.3)]


def split_name(kind: str, rate: float) -> str:
    return f"test-{kind}{round(rate * 100):02d}"  # e.g. test-char05, test-drop20


def char_noise(text: str, rate: float, rng: random.Random) -> str:
    """Each letter, with probability `rate`, is substituted, deleted, doubled or swapped with the next one
    (the typo model of robustness benchmarks such as TextFlint / AdvGLUE's typo attacks, simplified)."""
    out, chars, i = [], list(text), 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < rate:
            op = rng.randrange(4)
            if op == 0:
                out.append(rng.choice(string.ascii_lowercase))
            elif op == 2:
                out += [c, c]
            elif op == 3 and i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 1
            # op == 1 (or a swap at the end): deleted
        else:
            out.append(c)
        i += 1
    return "".join(out)


def word_dropout(text: str, rate: float, rng: random.Random) -> str:
    """Each word dropped with probability `rate`; at least one word is kept."""
    words = text.split()
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept or words[:1])


def perturb(text: str, kind: str, rate: float, key: str) -> str:
    """Deterministic: the same (text, kind, rate, key) gives the same copy on every machine and run."""
    rng = random.Random(f"{kind}:{rate}:{key}")  # str seeds hash with sha512: stable across processes
    return char_noise(text, rate, rng) if kind == "char" else word_dropout(text, rate, rng)


def write_perturbed(test_csv: str, out_dir: str, perturbations=PERTURBATIONS) -> dict[str, str]:
    """One CSV per perturbation beside the clean splits (same ids and labels); returns split name -> path."""
    with open(test_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    paths = {}
    for kind, rate in perturbations:
        name = split_name(kind, rate)
        paths[name] = os.path.join(out_dir, f"{name}.csv")
        with open(paths[name], "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({**r, "text": perturb(r["text"], kind, rate, r["id"])} for r in rows)
    return paths


def run_one(method: str, seed: int, a: argparse.Namespace) -> dict:
    """Train one method on the clean splits; accuracy on test and on every perturbed copy."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with open(os.path.join(a.work, "data", "splits.json")) as f:
        data = json.load(f)
    store = os.path.join(a.work, "store")
    t0 = time.perf_counter()
    if method == "extract":
        from featstore.extract import ExtractConfig, extract

        s = extract(ExtractConfig(model=a.model, data=data, out=store, text_column="text", label_columns=["topic"],
                                  id_column="id", layers=a.layers, max_length=a.max_length, progress=False))
        kept = result_path(a.work, method, seed)
        if s.tokens:  # a complete store is kept as it is (0 tokens): report the run that wrote it
            _write_json(kept, {"seconds": time.perf_counter() - t0, "tokens": s.tokens})
        if not os.path.isfile(kept):
            return {"seconds": None, "tokens": None}
        with open(kept) as f:
            return json.load(f)
    evals = [k for k in data if k not in ("train", "validation")]
    if "(store)" in method:
        import heads
        from heads.config import TrainConfig

        kind = "linear" if method.startswith("linear") else "ytuning"
        top = int(method.split()[2]) if method.startswith("Y-Tuning top") else 0
        run = os.path.join(a.work, f"{kind}-top{top}-{seed}")
        heads.train(TrainConfig(head=kind, store=store, label_column="topic", epochs=a.epochs, seeds=[seed],
                                patience=None, out=run, overwrite=True, progress=False,
                                label_init="prior" if kind == "ytuning" else "random",
                                layers="all" if kind == "ytuning" else "-1", pooling="mean",
                                tune_top_layers=top, top_lr=a.top_lr))
        acc = {k: heads.evaluate(run, store, k).metrics["accuracy"] for k in evals}
    else:
        from benchmarks.finetune import finetune

        lora = 8 if method.startswith("LoRA") else 0
        r = finetune(data, a.model, "topic", seed, a.epochs, a.max_length, device=device, lora=lora,
                     **({"lr": 5e-4} if lora else {}))
        acc = r["split_accuracy"]
    out = {"accuracy": acc, "seconds": time.perf_counter() - t0}
    _write_json(result_path(a.work, method, seed), out)  # kept: a re-run with the same --work resumes
    return out


def _write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def result_path(work: str, method: str, seed: int) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in method.lower())
    return os.path.join(work, "results", f"{slug}-{seed}.json")


def make_rows(results: dict[str, list[dict]], names: list[str]) -> list[dict]:
    """Per method: mean accuracy over seeds on each split, and its drop from clean test (absolute and %)."""
    rows = []
    for m, rs in results.items():
        acc = {k: statistics.mean(r["accuracy"][k] for r in rs) for k in ["test", *names]}
        rows.append({"method": m, "accuracy": acc,
                     "drop": {k: acc["test"] - acc[k] for k in names},
                     "relative_drop_pct": {k: 100 * (acc["test"] - acc[k]) / max(acc["test"], 1e-9) for k in names}})
    return rows


def report(rows: list[dict], names: list[str], settings: dict) -> None:
    print(f"\nRobustness: BBC News ({settings['limit']}/topic), {settings['model']}, max_length "
          f"{settings['max_length']}, {settings['epochs']} epochs, seeds [{settings['seeds']}]: test accuracy "
          "(mean over seeds) and, per perturbed copy, accuracy (drop from clean)")
    print(f"{'method':<24}{'clean':>8}" + "".join(f"{n[5:]:>16}" for n in names))
    for r in rows:
        print(f"{r['method']:<24}{r['accuracy']['test']:>8.3f}"
              + "".join(f"{r['accuracy'][n]:>8.3f} ({r['accuracy'][n] - r['accuracy']['test']:+.3f})" for n in names))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--top-lr", type=float, default=5e-5)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--work", default=None, help="keeps the data, the store and each (method, seed) result; a re-run "
                    "with the same --work measures only what is missing (use a new one for other settings)")
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: report what the (method, seed) runs kept under --work/results measured so far")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one[0], int(a.one[1]), a)))
        return

    from benchmarks.bbc import make_splits

    a.work = a.work or tempfile.mkdtemp(prefix="robustness-")
    d = os.path.join(a.work, "data")
    data = make_splits(d, limit=a.limit)
    extra = write_perturbed(data["test"], d)
    with open(os.path.join(d, "splits.json"), "w") as f:
        json.dump({**data, **extra}, f)

    def child(method: str, seed: int) -> dict | None:
        from benchmarks.vs_finetune import run_child

        path = result_path(a.work, method, seed)
        if os.path.isfile(path):  # measured by an earlier run with this --work
            with open(path) as f:
                return json.load(f)
        return None if a.collect else run_child(__file__, method, seed, a)

    extraction = None if a.collect else child("extract", 0)
    seeds = [int(s) for s in a.seeds.split(",")]
    methods = [m for m in METHODS if m in a.methods.split(",")]
    results = {m: [r for r in (child(m, s) for s in seeds) if r is not None] for m in methods}
    results = {m: rs for m, rs in results.items() if rs}
    names = list(extra)
    rows = make_rows(results, names)
    for r in rows:
        r["seeds"] = len(results[r["method"]])
    report(rows, names, vars(a))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"settings": vars(a), "extraction": extraction, "rows": rows, "runs": results,
                       "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}}, f, indent=1)


if __name__ == "__main__":
    main()
