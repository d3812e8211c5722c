"""Heads of the previous release as test data, and the training metrics it gave, for the compatibility checks.

`python -m tests.heads.prev_release write DIR` (run with the release's code) trains tiny heads on stores
extracted with the tiny random BERT of tests/conftest.py and writes, under DIR, the head directories and what
they predicted and evaluated (expected.json). `tests/heads/test_prev_release.py` rebuilds the same encoder and
stores (both deterministic) and checks that today's code loads those heads and gives the same outputs.

`python -m tests.heads.prev_release metrics OUT.json` trains `heads train` runs of every task and head on
synthetic stores with fixed seeds and writes their metrics: run it before and after a change to the training
code and compare the files (`... compare A.json B.json`).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from typing import Any

WORDS = ("the a cat dog runs sits on mat quickly slowly red blue green market shares fell rose match "
         "goal team film music vote minister election phone software").split()
TAG = {"cat": "B-ANI", "dog": "B-ANI", "red": "B-COL", "blue": "B-COL", "green": "I-COL"}
SMALL = dict(epochs=2, d_head=8, n_layers=1, n_heads=2, progress=False, seeds=[0])
SENTENCES = ["the cat sits on the mat", "market shares fell quickly", "red blue green film music",
             "the minister won the election vote", "dog"]
TAG_TEXTS = ["the red cat runs", "a dog sits on the blue mat", "green"]
QA = [("the cat sits on the mat", "where is cat"), ("market shares fell quickly today", "where is fell")]


def sentence_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    return [{"id": f"s{seed}-{i}", "text": " ".join(rnd.choices(WORDS, k=rnd.randint(1, 12))),
             "label": ("pos", "neg", "neutral")[i % 3], "score": round(rnd.random() * 5, 3)} for i in range(n)]


def conll(n: int, seed: int) -> str:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        tags: list[str] = []
        words = rnd.choices(WORDS, k=rnd.randint(2, 9))
        for w in words:
            t = TAG.get(w, "O")
            tags.append("B-COL" if t == "I-COL" and not (tags and tags[-1].endswith("COL")) else t)
        out.append("".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) + "\n")
    return "".join(out)


def build_stores(model: str, d: str) -> dict[str, str]:
    """A sentence store and a token store, extracted with `model`: the same files give the same fingerprints."""
    from featstore.extract import ExtractConfig, extract

    os.makedirs(d, exist_ok=True)
    data_s, data_t = {}, {}
    for name, n, seed in (("train", 30, 1), ("validation", 9, 2), ("test", 9, 3)):
        data_s[name] = os.path.join(d, f"{name}.jsonl")
        with open(data_s[name], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in sentence_rows(n, seed))
        data_t[name] = os.path.join(d, f"{name}.conll")
        with open(data_t[name], "w") as f:
            f.write(conll(n, seed + 10))
    stores = {"sentence": os.path.join(d, "sentence"), "token": os.path.join(d, "token")}
    extract(ExtractConfig(model=model, data=data_s, out=stores["sentence"], layers="1,2", max_length=32,
                          label_columns=["label", "score"], progress=False))
    extract(ExtractConfig(model=model, data=data_t, out=stores["token"], task="token", layers="1,2",
                          max_length=32, progress=False))
    return stores


def outputs(runs: dict[str, str], stores: dict[str, str], model: str) -> dict[str, Any]:
    """What each head gives: eval metrics and predictions on the test split, predictions on fixed texts."""
    from heads import evaluate, predict

    out = {}
    for name, run in runs.items():
        store = stores["token"] if name == "token" else stores["sentence"]
        ev = evaluate(run, store, "test")
        texts = TAG_TEXTS if name == "token" else SENTENCES
        out[name] = {"eval": {"metrics": ev.metrics, "predictions": ev.predictions},
                     "predict": predict(run, texts, model=model)}
    return out


RUNS = {"ytuning": ("ytuning", "sentence", "label"), "linear_regression": ("linear", "sentence", "score"),
        "mlp": ("mlp", "sentence", "label"), "token": ("ytuning", "token", None)}


def write(dest: str) -> None:
    from heads import TrainConfig, train
    from tests.conftest import build_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model("bert", os.path.join(tmp, "bert"))
        stores = build_stores(model, os.path.join(tmp, "data"))
        runs = {}
        for name, (head, store, column) in RUNS.items():
            runs[name] = os.path.join(dest, name)
            shutil.rmtree(runs[name], ignore_errors=True)
            train(TrainConfig(head, store=stores[store], label_column=column, out=runs[name], **SMALL))
            os.remove(os.path.join(runs[name], "train_log.jsonl"))  # not read by eval or predict
        with open(os.path.join(dest, "expected.json"), "w") as f:
            json.dump(outputs(runs, stores, model), f, indent=1)
            f.write("\n")


# -- training metrics on synthetic stores ----------------------------------------------------------------

def train_metrics(path: str) -> None:
    from heads import TrainConfig, train
    from tests.heads.synthetic import classification_store, regression_store, span_store, token_store

    import torch

    torch.set_num_threads(1)
    res = {}
    with tempfile.TemporaryDirectory() as d:
        st = {"cls": classification_store(f"{d}/cls", n_train=200, n_dev=60, n_test=60, signal=5.0),
              "reg": regression_store(f"{d}/reg", n_train=200, n_dev=60, n_test=60),
              "tok": token_store(f"{d}/tok", n_train=120, n_dev=40, n_test=40),
              "span": span_store(f"{d}/span", n_train=120, n_dev=40, n_test=40)}
        common = dict(d_head=16, n_layers=1, n_heads=2, epochs=4, progress=False, seeds=[0, 1])
        runs = {"ytuning": ("ytuning", "cls", "label", {}),
                "ytuning_prior": ("ytuning", "cls", "label", {"label_init": "prior"}),
                "linear": ("linear", "cls", "label", {}), "mlp": ("mlp", "cls", "label", {"pooling": "cls"}),
                "ytuning_regression": ("ytuning", "reg", "score", {}),
                "linear_regression": ("linear", "reg", "score", {}),
                "token_ytuning": ("ytuning", "tok", None, {}), "token_linear": ("linear", "tok", None, {}),
                "span_ytuning": ("ytuning", "span", None, {}), "span_linear": ("linear", "span", None, {})}
        for name, (head, store, column, extra) in runs.items():
            r = train(TrainConfig(head, store=st[store], label_column=column, out=f"{d}/{name}",
                                  **{**common, **extra}))
            res[name] = {"summary": r.summary, "seeds": [s.metrics for s in r.seeds],
                         "best_epochs": [s.best_epoch for s in r.seeds]}
    with open(path, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)


def compare(a: str, b: str, tol: float = 1e-6) -> int:
    """Print the largest difference per run; non-zero exit when any value differs by more than `tol`."""
    with open(a) as f:
        x = json.load(f)
    with open(b) as f:
        y = json.load(f)

    def flat(d: Any, p: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            return {k: v for kk, vv in d.items() for k, v in flat(vv, f"{p}/{kk}").items()}
        if isinstance(d, list):
            return {k: v for i, vv in enumerate(d) for k, v in flat(vv, f"{p}/{i}").items()}
        return {p: d}

    fx, fy = flat(x), flat(y)
    bad = 0
    if set(fx) != set(fy):
        print("different keys:", sorted(set(fx) ^ set(fy))[:10])
        bad = 1
    for run in sorted(x):
        diffs = [abs(fx[k] - fy[k]) for k in fx if k.startswith(f"/{run}/") and k in fy
                 and isinstance(fx[k], float) and isinstance(fy[k], float)]
        n = sum(1 for k in fx if k.startswith(f"/{run}/"))
        worst = max(diffs, default=0.0)
        bad |= worst > tol
        print(f"{run:<22} {n:>4} values  max |diff| {worst:.3g}")
    return int(bad)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "write":
        write(args[0])
    elif cmd == "metrics":
        train_metrics(args[0])
    else:
        sys.exit(compare(*args))
