"""Heads on stores whose test split holds a tag or class that train lacks: training learns what train has, and
the metrics score every gold label as it is, so the unseen ones count as errors."""
from __future__ import annotations

import json

from heads import TrainConfig, evaluate, train

from featstore.extract import ExtractConfig, extract

# POS tags; the test split has `SYM`, which train lacks (a rare tag of real POS corpora)
TRAIN = "John\tNNP\nlikes\tVBZ\nZurich\tNNP\n\nMary\tNNP\nsleeps\tVBZ\nin\tIN\nBern\tNNP\n\n"
TEST = "Anna\tNNP\nbuys\tVBZ\n$\tSYM\n\nBob\tNNP\npays\tVBZ\n$\tSYM\n\n"


def test_token_head_counts_unseen_gold_tags_as_errors(bert, tmp_path):
    (tmp_path / "train.conll").write_text(TRAIN * 4)
    (tmp_path / "test.conll").write_text(TEST)
    store = str(tmp_path / "st")
    extract(ExtractConfig(model=bert, data={"train": str(tmp_path / "train.conll"),
                                            "test": str(tmp_path / "test.conll")},
                          out=store, task="token", layers="-1", progress=False))
    run = str(tmp_path / "run")
    res = train(TrainConfig("linear", store=store, out=run, dev_split="none", test_split="test", epochs=20, lr=1e-2,
                            progress=False))
    assert res.label_column == "tags" and res.primary_metric == "accuracy"
    ev = evaluate(run, store, "test")
    gold = [p["target"] for p in ev.predictions]
    pred = [p["tags"] for p in ev.predictions]
    words = sum(len(g) for g in gold)
    unseen = sum(t == "SYM" for g in gold for t in g)
    assert unseen == 2
    # the head never learnt SYM, so every SYM word is wrong, and the metric divides by all words, SYM included
    assert not any(p == "SYM" for seq in pred for p in seq)
    right = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    assert ev.metrics["accuracy"] == right / words
    assert ev.metrics["accuracy"] <= (words - unseen) / words


def test_sentence_head_counts_unseen_class_as_errors(bert, tmp_path):
    def rows(labels):
        return "".join(json.dumps({"id": f"r{i}", "text": f"{'good great' if v == 'pos' else 'bad awful'} {i}",
                                   "label": v}) + "\n" for i, v in enumerate(labels))

    (tmp_path / "train.jsonl").write_text(rows(["pos", "neg"] * 10))
    (tmp_path / "test.jsonl").write_text(rows(["pos", "neg", "neutral", "neutral"]))
    store = str(tmp_path / "st")
    extract(ExtractConfig(model=bert, data={"train": str(tmp_path / "train.jsonl"),
                                            "test": str(tmp_path / "test.jsonl")},
                          out=store, label_columns=["label"], layers="-1", progress=False))
    run = str(tmp_path / "run")
    train(TrainConfig("linear", store=store, label_column="label", out=run, dev_split="none", test_split="test",
                      epochs=3, progress=False))
    ev = evaluate(run, store, "test")
    assert [p["target"] for p in ev.predictions] == ["pos", "neg", "neutral", "neutral"]
    assert all(p["label"] != "neutral" for p in ev.predictions)
    right = sum(p["label"] == p["target"] for p in ev.predictions)
    assert ev.metrics["accuracy"] == right / 4 <= 0.5
