"""`heads predict` for token and span heads with a real (tiny, random) BERT: predictions on raw text equal
`heads eval`'s decoding of the same examples from the store; entities and answers carry character offsets."""
from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from cli.heads_cli import main
from featstore.extract import ExtractConfig, extract
from heads import TrainConfig, evaluate, predict, train
from tests.conftest import WORDS

TAG = {"cat": "B-ANI", "dog": "B-ANI", "red": "B-COL", "blue": "B-COL", "green": "I-COL"}


def sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        words = rnd.choices(WORDS, k=rnd.randint(2, 9))
        tags = []
        for w in words:
            t = TAG.get(w, "O")
            if t == "I-COL" and not (tags and tags[-1].endswith("COL")):
                t = "B-COL"
            tags.append(t)
        out.append((words, tags))
    return out


def write_conll(path, sents) -> str:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(ws, ts)) + "\n" for ws, ts in sents))
    return str(path)


def write_squad(path, n: int, seed: int) -> tuple[str, list[tuple[str, str]]]:
    rnd = random.Random(seed)
    paragraphs, pairs = [], []
    for i in range(n):
        context = " ".join(rnd.choices(WORDS, k=rnd.randint(6, 14)))
        word = rnd.choice(context.split())
        start = context.index(word)
        q = f"where is {word}"
        paragraphs.append({"context": context, "qas": [{"id": f"q{i}", "question": q,
                                                        "answers": [{"text": word, "answer_start": start}]}]})
        pairs.append((context, q))
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    return str(path), pairs


@pytest.fixture(scope="module")
def runs(bert, tmp_path_factory):
    d = tmp_path_factory.mktemp("seqpredict")
    sents = {k: sentences(n, s) for k, n, s in (("train", 40, 1), ("validation", 10, 2), ("test", 10, 3))}
    tok_data = {k: write_conll(d / f"{k}.conll", v) for k, v in sents.items()}
    extract(ExtractConfig(model=bert, data=tok_data, out=str(d / "tok"), task="token", layers="1,2",
                          max_length=32, progress=False))
    qa = {k: write_squad(d / f"{k}.json", n, s) for k, n, s in (("train", 30, 4), ("validation", 8, 5),
                                                                   ("test", 8, 6))}
    extract(ExtractConfig(model=bert, data={k: v[0] for k, v in qa.items()}, out=str(d / "qa"), task="span",
                          layers="1,2", max_length=32, progress=False))
    common = dict(epochs=2, d_head=16, n_layers=1, n_heads=2, progress=False)
    out = {}
    for name, store in (("tok", "tok"), ("qa", "qa")):
        out[name] = str(d / f"run-{name}")
        train(TrainConfig("ytuning", store=str(d / store), out=out[name], **common))
    return {"dir": d, "runs": out, "sents": sents, "qa": {k: v[1] for k, v in qa.items()},
            "stores": {"tok": str(d / "tok"), "qa": str(d / "qa")}}


def test_token_predict_equals_eval(runs):
    ev = evaluate(runs["runs"]["tok"], runs["stores"]["tok"], "test")
    assert {"f1", "precision", "recall", "accuracy"} <= set(ev.metrics)
    texts = [" ".join(w) for w, _ in runs["sents"]["test"]]
    recs = predict(runs["runs"]["tok"], texts)
    by_row = {p["row"]: p for p in ev.predictions}
    for i, r in enumerate(recs):
        assert r["tags"] == by_row[i]["tags"]
        assert r["words"] == runs["sents"]["test"][i][0]
        for e in r["entities"]:
            assert r["text"][e["start"]:e["end"]] == e["text"]


def test_span_predict_equals_eval(runs):
    ev = evaluate(runs["runs"]["qa"], runs["stores"]["qa"], "test")
    assert set(ev.metrics) == {"exact_match", "f1"}
    pairs = runs["qa"]["test"]
    recs = predict(runs["runs"]["qa"], [c for c, _ in pairs], [q for _, q in pairs])
    by_row = {p["row"]: p for p in ev.predictions}
    for i, r in enumerate(recs):
        assert r["answer"] == by_row[i]["answer"]
        if r["answer"]:
            assert r["context"][r["start"]:r["end"]] == r["answer"]


def test_predict_cli(runs):
    res = CliRunner().invoke(main, ["predict", runs["runs"]["tok"], "--text", "the red  cat runs", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    assert rec["words"] == ["the", "red", "cat", "runs"] and len(rec["tags"]) == 4
    ctx = "the dog sits on the mat"
    res = CliRunner().invoke(main, ["predict", runs["runs"]["qa"], "--context", ctx, "--question", "where is dog"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["predict", runs["runs"]["qa"], "--context", ctx])
    assert res.exit_code == 2
