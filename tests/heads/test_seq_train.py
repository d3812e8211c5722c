"""Token and span heads on planted synthetic stores: Y-Tuning and linear, the same protocol and artefacts."""
from __future__ import annotations

import json
import os

import pytest

from heads import TrainConfig, train
from heads.errors import InputError

from .synthetic import span_store, token_store

SEQ = dict(d_head=32, n_layers=1, n_heads=2, lr=3e-3, epochs=15, patience=5, progress=False)


@pytest.fixture(scope="module")
def seq_stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("seq")
    return {"token": token_store(str(d / "tok")), "span": span_store(str(d / "span")),
            "span2": span_store(str(d / "span2"), unanswerable=0.3)}


@pytest.mark.parametrize("head", ["ytuning", "linear"])
def test_token_heads_recover_entities(seq_stores, tmp_path, head):
    r = train(TrainConfig(head, store=seq_stores["token"], out=str(tmp_path / head), **SEQ))
    f1 = r.summary["test"]["f1"]["mean"]
    print(f"{head} token planted test entity F1 {f1:.4f}")
    assert r.task == "token" and r.primary_metric == "f1"
    assert f1 >= 0.95 and r.summary["test"]["accuracy"]["mean"] >= 0.95
    for f in ("head.json", "metrics.json"):
        assert os.path.isfile(tmp_path / head / f)
    meta = json.loads((tmp_path / head / "head.json").read_text())
    assert meta["task"] == "token" and meta["seq_task"]["scheme"] == "IOB2" and meta["label_names"][0] == "O"


@pytest.mark.parametrize("store,head", [("span", "ytuning"), ("span2", "ytuning"), ("span", "linear")])
def test_span_heads_find_answers(seq_stores, tmp_path, store, head):
    r = train(TrainConfig(head, store=seq_stores[store], out=str(tmp_path / head), **SEQ))
    em = r.summary["test"]["exact_match"]["mean"]
    print(f"{head} span ({store}) planted test EM {em:.4f}")
    assert r.task == "span" and em >= 0.95


def test_task_mismatch_and_mlp(seq_stores, tmp_path):
    with pytest.raises(InputError, match="holds a token task"):
        train(TrainConfig("ytuning", store=seq_stores["token"], out=str(tmp_path / "a"), task="span", **SEQ))
    with pytest.raises(InputError, match="mlp"):
        train(TrainConfig("mlp", store=seq_stores["token"], out=str(tmp_path / "b"), **SEQ))
