"""Multi-label classification through the one pipeline: metrics against hand computations, the threshold
chosen on dev and kept in head.json, planted labels learnt by every head, and the whole path from files
(a list column and 0/1 columns) through `featstore extract` / `add-labels` to `heads train`, `eval`, `predict`."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner

import featstore
from cli.featstore_cli import main as featstore_main
from cli.heads_cli import main as heads_main
from heads import TrainConfig, evaluate, load_head, predict, train
from heads.tasks.multilabel import MultiLabel
from tests.conftest import WORDS

from .synthetic import TOPICS, multilabel_store

SMALL = dict(d_head=32, n_layers=1, n_heads=2, lr=3e-3, epochs=15, patience=5, progress=False)


def test_metrics_against_a_hand_computation():
    gold = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]], dtype=bool)
    m = MultiLabel("t", ["a", "b", "c"]).metrics(None, list(pred), gold)
    # a: tp 2 fp 0 fn 0 -> 1; b: tp 1 fp 0 fn 1 -> 2/3; c: tp 0 fp 1 fn 1 -> 0; pooled: tp 3 fp 1 fn 2 -> 6/9
    assert m["f1/a"] == pytest.approx(1.0) and m["f1/b"] == pytest.approx(2 / 3) and m["f1/c"] == 0.0
    assert m["micro_f1"] == pytest.approx(6 / 9)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["subset_accuracy"] == 0.0
    # a label neither gold nor predicted has no F1 and does not count in the macro average
    m = MultiLabel("t", ["a", "b"]).metrics(None, [np.array([True, False])], np.array([[1, 0]]))
    assert np.isnan(m["f1/b"]) and m["macro_f1"] == 1.0 and m["subset_accuracy"] == 1.0


def test_threshold_is_the_best_on_dev():
    gold = np.array([[1], [0], [1], [0]])
    probs = np.array([[0.9], [0.35], [0.4], [0.1]])
    # >= 0.40 keeps both positives and no negative (F1 1.0); 0.15..0.35 adds a false positive (0.8); 0.45 loses one
    task = MultiLabel("t", ["a"])
    assert task.decide(probs, gold) == {"threshold": 0.4}
    task.apply({"threshold": 0.4})
    assert [bool(p[0]) for p in task.decode(probs, gold)] == [True, False, True, False]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return multilabel_store(str(tmp_path_factory.mktemp("ml") / "store"))


@pytest.mark.parametrize("head,extra", [("ytuning", {"label_init": "prior"}), ("linear", {}), ("mlp", {})])
def test_planted_labels_are_learnt_by_every_head(planted, tmp_path, head, extra):
    out = str(tmp_path / head)
    r = train(TrainConfig(head, store=planted, label_column="topics", out=out, seeds=[0], **{**SMALL, **extra}))
    test = r.summary["test"]
    print(f"{head} multilabel planted test micro-F1 {test['micro_f1']['mean']:.4f}")
    assert r.task == "multilabel" and r.primary_metric == "micro_f1"
    assert test["micro_f1"]["mean"] >= 0.9 and all(f"f1/{t}" in test for t in TOPICS)
    meta = json.load(open(f"{out}/head.json"))
    threshold = meta["decisions"]["0"]["threshold"]
    assert 0 < threshold < 1 and load_head(out).task.threshold == threshold
    ev = evaluate(out, planted, "test")
    assert ev.metrics == pytest.approx(r.seeds[0].metrics["test"])  # eval decodes with the recorded threshold
    for rec in ev.predictions:
        assert rec["labels"] == [t for t in TOPICS if rec["probabilities"][t] >= threshold]


# -- end to end on a constructed dataset --------------------------------------------------------------------

KEYWORDS = {"animal": {"cat", "dog"}, "colour": {"red", "blue", "green"}, "finance": {"market", "shares"}}


def rows(n: int, seed: int) -> list[dict]:
    """Texts of random words; a text's topics are those with a keyword in it (none, one or several)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        words = rnd.choices(WORDS, k=rnd.randint(2, 8))
        topics = [t for t, kw in KEYWORDS.items() if kw & set(words)]
        out.append({"id": f"r{seed}-{i}", "text": " ".join(words), "topics": topics,
                    **{t: int(t in topics) for t in KEYWORDS}})
    return out


def hand_metrics(preds: list[dict]) -> dict[str, float]:
    """Micro, macro and per-label F1 counted from eval's per-example records, independently of the package."""
    per = {}
    tp_all = fp_all = fn_all = 0
    for t in TOPICS:
        tp = sum(t in r["labels"] and t in r["target"] for r in preds)
        fp = sum(t in r["labels"] and t not in r["target"] for r in preds)
        fn = sum(t not in r["labels"] and t in r["target"] for r in preds)
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
        if tp + fp + fn:
            per[t] = 2 * tp / (2 * tp + fp + fn)
    return {"micro_f1": 2 * tp_all / (2 * tp_all + fp_all + fn_all), "macro_f1": sum(per.values()) / len(per),
            **{f"f1/{t}": v for t, v in per.items()}}


def test_extract_train_eval_predict(bert, tmp_path):
    data = {}
    for name, n, seed in (("train", 60, 1), ("validation", 20, 2), ("test", 20, 3)):
        rs = rows(n, seed)
        data[name] = tmp_path / f"{name}.jsonl"
        data[name].write_text("".join(json.dumps(r) + "\n" for r in rs))
        flags = tmp_path / f"{name}-flags.csv"  # the same labels as 0/1 columns, for add-labels
        flags.write_text("id,animal,colour,finance\n" + "".join(
            f"{r['id']},{r['animal']},{r['colour']},{r['finance']}\n" for r in rs))
    store = str(tmp_path / "store")
    fs = CliRunner()
    r = fs.invoke(featstore_main, ["extract", "--model", bert, *[f"--data={k}={v}" for k, v in data.items()],
                                   "--id-column", "id", "--label-column", "topics", "--layers", "1,2",
                                   "--max-length", "32", "--out", store, "--quiet"])
    assert r.exit_code == 0, r.output
    r = fs.invoke(featstore_main, ["add-labels", store, "--id-column", "id", "--label-column",
                                   "flags=animal,colour,finance",
                                   *[f"--data={k}={tmp_path / f'{k}-flags.csv'}" for k in data]])
    assert r.exit_code == 0 and "'flags' (multi-label, 3 labels)" in r.output, r.output
    with featstore.open_store(store) as st:
        assert st.label_columns["topics"]["kind"] == "multilabel" and st.label_columns["topics"]["names"] == TOPICS
        assert st.label_columns["flags"]["names"] == TOPICS
        for name in data:  # the list column and the 0/1 columns are the same labels
            np.testing.assert_array_equal(st.split(name).targets("topics"), st.split(name).targets("flags"))

    hd = CliRunner()
    run = str(tmp_path / "run")
    r = hd.invoke(heads_main, ["train", "linear", "--store", store, "--label-column", "flags", "--epochs", "8",
                               "--lr", "1e-2", "--out", run, "--quiet"])
    assert r.exit_code == 0, r.output
    assert "micro_f1" in r.output and "f1/animal" in r.output and "(multilabel)" in r.output
    preds_file = tmp_path / "preds.jsonl"
    r = hd.invoke(heads_main, ["eval", run, "--store", store, "--split", "test", "--json",
                               "--predictions", str(preds_file)])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.output)["metrics"]
    preds = [json.loads(line) for line in preds_file.read_text().splitlines()]
    want = hand_metrics(preds)
    for k, v in want.items():
        assert metrics[k] == pytest.approx(v), k
    assert sum(len(r["target"]) for r in preds) > 5 and any(r["labels"] for r in preds)  # nothing trivial

    texts = ["the red cat sits", "market shares fell", "the mat"]
    recs = predict(run, texts, model=bert)
    threshold = json.load(open(f"{run}/head.json"))["decisions"]["0"]["threshold"]
    for rec in recs:
        assert rec["threshold"] == threshold
        assert rec["labels"] == [t for t in TOPICS if rec["probabilities"][t] >= threshold]
    r = hd.invoke(heads_main, ["predict", run, "--model", bert, *[f"--text={t}" for t in texts]])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 3
    for line, rec in zip(lines, recs):
        shown = line.split("\t")[0]
        assert shown == ("  ".join(f"{t}={rec['probabilities'][t]:.3f}" for t in rec["labels"]) or "-")
        assert line.endswith(rec["text"])


def test_bad_multilabel_input_is_one_line(bert, tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text("text,a,b\nthe cat,1,2\n")
    r = CliRunner().invoke(featstore_main, ["extract", "--model", bert, f"--data=train={bad}", "--label-column",
                                            "t=a,b", "--out", str(tmp_path / "s"), "--quiet"])
    assert r.exit_code == 2 and "must hold 0 or 1" in r.output and "Traceback" not in r.output
