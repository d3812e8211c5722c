"""`heads predict` on raw text with a real (tiny, random) BERT: features equal the store's, predictions equal
`heads eval`'s for the same examples, probabilities sum to one."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import featstore
from cli.heads_cli import main
from featstore.extract import ExtractConfig, extract
from heads import TrainConfig, evaluate, load_head, predict, train
from heads.errors import HeadError, InputError
from heads.predict import extract_features, load_backbone
from tests.conftest import make_rows, write_jsonl

LABELS = ["neg", "neutral", "pos"]


@pytest.fixture(scope="module")
def real(bert, tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    rows = {"train": make_rows(40, 11), "validation": make_rows(12, 12), "test": make_rows(12, 13)}
    data = {k: write_jsonl(d / f"{k}.jsonl", v) for k, v in rows.items()}
    store = str(d / "store")
    extract(ExtractConfig(model=bert, data=data, out=store, label_columns=["label"], id_column="id", layers="1,2",
                          max_length=32, batch_tokens=256, progress=False))
    runs = {}
    for head in ("ytuning", "linear"):
        runs[head] = str(d / head)
        train(TrainConfig(head, store=store, label_column="label", out=runs[head], epochs=2, d_head=16, n_layers=1,
                          n_heads=2, progress=False, label_init="prior" if head == "ytuning" else "random"))
    return {"store": store, "runs": runs, "rows": rows, "dir": d}


def test_predict_raw_text(real):
    recs = predict(real["runs"]["ytuning"], ["the cat sits on the mat", "market shares fell quickly", "goal"])
    assert [r["text"] for r in recs] == ["the cat sits on the mat", "market shares fell quickly", "goal"]
    for r in recs:
        assert r["label"] in LABELS and sorted(r["probabilities"]) == LABELS
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)


def test_features_equal_the_store(real):
    store = featstore.open_store(real["store"])
    sp = store.split("test")
    head = load_head(real["runs"]["ytuning"])
    lm = load_backbone(head)
    for i in (0, sp.n_examples - 1):  # longest and shortest
        text = real["rows"]["test"][int(sp.rows[i])]["text"]
        split, _ = head.task.predict_split([text], None, head.meta["backbone"])
        feats = extract_features(head, lm, split, 8, "cpu")
        np.testing.assert_allclose(feats.tokens, sp.example(i, [1, 2]).astype(np.float32), atol=2e-3, rtol=0)
    store.close()


@pytest.mark.parametrize("head", ["ytuning", "linear"])
def test_predictions_equal_eval(real, head):
    run = real["runs"][head]
    texts = [r["text"] for r in real["rows"]["test"]]
    preds = predict(run, texts)
    ev = evaluate(run, real["store"], "test")
    assert [p["row"] for p in ev.predictions] == list(range(len(texts)))
    for p, e in zip(preds, ev.predictions):
        assert p["label"] == e["label"]
        for k in LABELS:
            assert p["probabilities"][k] == pytest.approx(e["probabilities"][k], abs=1e-3)


def test_predict_cli(real, tmp_path):
    run = real["runs"]["ytuning"]
    r = CliRunner().invoke(main, ["predict", run, "--text", "red film", "--text", "blue phone", "--json"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["text"] for x in lines] == ["red film", "blue phone"] and all(x["label"] in LABELS for x in lines)
    r = CliRunner().invoke(main, ["predict", run, "--text", "red film"])
    assert r.exit_code == 0 and r.stdout.split("\t")[0] in LABELS
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("a cat", "the vote", "music")))
    r = CliRunner().invoke(main, ["predict", run, "--input", str(inp), "--output", str(tmp_path / "out.jsonl")])
    assert r.exit_code == 0, r.output
    out = [json.loads(x) for x in open(tmp_path / "out.jsonl")]
    assert [x["text"] for x in out] == ["a cat", "the vote", "music"]
    txt = tmp_path / "in.txt"
    txt.write_text("one text\nanother text\n")
    r = CliRunner().invoke(main, ["predict", run, "--input", str(txt), "--json"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 2


def test_predict_bad_input(real, tmp_path):
    run = real["runs"]["ytuning"]
    with pytest.raises(InputError, match="single texts"):
        predict(run, ["a"], ["b"])
    with pytest.raises(InputError, match="nothing to predict"):
        predict(run, [])
    r = CliRunner().invoke(main, ["predict", run, "--text", "x", "--model", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "cannot load the head's backbone" in r.stderr


def test_another_backbone_or_tokenizer_is_refused(real, bert_variants):
    """`heads predict --model` with a backbone whose weights, or whose tokenizer, differ from the ones that
    made the head's features is refused, naming which; without the checks the same call would run."""
    run = real["runs"]["ytuning"]
    with pytest.raises(HeadError, match="its weights differ from those the head's features were extracted with"):
        predict(run, ["red film"], model=bert_variants["weights"])
    with pytest.raises(HeadError, match="its tokenizer differs from the one the head's features were extracted"):
        predict(run, ["red film"], model=bert_variants["tokenizer"])
    r = CliRunner().invoke(main, ["predict", run, "--text", "red film", "--model", bert_variants["weights"]])
    assert r.exit_code == 2 and "its weights differ" in r.stderr and "--model with the right backbone" in r.stderr
    for variant in bert_variants.values():  # the checks, nothing else, stood in the way
        assert predict(run, ["red film"], model=variant, verify_backbone=False)[0]["label"] in LABELS


def test_predict_unpickles_nothing(real, no_unpickling):
    assert predict(real["runs"]["linear"], ["red film"])[0]["label"] in LABELS


def test_pairs_and_regression(bert, tmp_path):
    """A text-pair store and a regression head: predict takes pairs, returns values equal to eval's."""
    rows = {"train": make_rows(30, 21), "validation": make_rows(8, 22), "test": make_rows(8, 23)}
    data = {k: write_jsonl(tmp_path / f"{k}.jsonl", v) for k, v in rows.items()}
    store = str(tmp_path / "pairs")
    extract(ExtractConfig(model=bert, data=data, out=store, pair_column="text2", label_columns=["score"],
                          layers="-1", max_length=32, progress=False))
    run = str(tmp_path / "reg")
    r = train(TrainConfig("ytuning", store=store, label_column="score", out=run, epochs=1, d_head=16, n_layers=1,
                          n_heads=2, progress=False))
    assert r.task == "regression"
    texts, pairs = [x["text"] for x in rows["test"]], [x["text2"] for x in rows["test"]]
    preds = predict(run, texts, pairs)
    ev = evaluate(run, store, "test")
    for p, e in zip(preds, ev.predictions):
        assert p["pair"] and p["prediction"] == pytest.approx(e["prediction"], abs=1e-3)
    with pytest.raises(InputError, match="text pairs"):
        predict(run, texts)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": t, "text2": q}) + "\n" for t, q in zip(texts[:2], pairs[:2])))
    res = CliRunner().invoke(main, ["predict", run, "--input", str(inp), "--json"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["prediction"] for x in res.stdout.splitlines()] == pytest.approx(
        [p["prediction"] for p in preds[:2]], abs=1e-6)
