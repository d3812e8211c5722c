"""A task defined and registered here alone (no edit anywhere else) trains, evaluates and predicts through
the public entry points: the proof that a task is one file plus a registry line."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import heads
from featstore.extract import ExtractConfig, extract
from heads.registry import TASKS
from heads.tasks.base import ExampleTask, label_column


class Even(ExampleTask):
    """Is the example's class id (of a class column) even? One logit, binary cross-entropy."""

    name = "toy-even"

    def __init__(self, column: str):
        self.column, self.label_names = column, ["even"]

    @classmethod
    def from_store(cls, store, column):
        assert label_column(store, column)["kind"] == "class"
        return cls(column)

    @classmethod
    def from_meta(cls, meta):
        return cls(meta["label_column"])

    def to_meta(self) -> dict[str, Any]:
        return {"label_column": self.column, "label_names": self.label_names, "label_values": None,
                "seq_task": None}

    @property
    def primary(self) -> str:
        return "accuracy"

    def targets(self, split):
        return (split.targets(self.column) % 2 == 0).astype(np.float32)

    def loss(self, out, y, mask, spec):
        return F.binary_cross_entropy_with_logits(out[:, 0].float(), y.float())

    def outputs(self, out, spec):
        return torch.sigmoid(out[:, 0].float())

    def decode(self, outputs, gold):
        return [bool(p >= 0.5) for p in outputs]

    def metrics(self, outputs, preds, gold):
        return {"accuracy": float(np.mean(np.asarray(preds) == (np.asarray(gold) > 0.5)))}

    def eval_record(self, i, outputs, preds, gold):
        return {"even": preds[i], "target": bool(gold[i] > 0.5)}

    def show(self, output, pred):
        return {"even": pred, "p": float(output)}

    def format_record(self, rec):
        return f"{rec['even']}\t{rec['text']}"


def test_a_task_registered_here_trains_evaluates_and_predicts(bert, splits, tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    extract(ExtractConfig(model=bert, data=splits, out=store, label_columns=["label"], layers="1,2", max_length=32,
                          progress=False))
    monkeypatch.setitem(TASKS, "toy-even", Even)  # the registry line, from this file
    out = str(tmp_path / "run")
    for head in ("linear", "ytuning"):
        r = heads.train(heads.TrainConfig(head, store=store, label_column="label", task="toy-even", out=out,
                                          epochs=3, d_head=16, n_layers=1, n_heads=2, progress=False, overwrite=True))
        assert r.task == "toy-even" and set(r.summary["test"]) == {"accuracy"}
    assert json.load(open(f"{out}/head.json"))["task"] == "toy-even"
    ev = heads.evaluate(out, store, "test")
    assert ev.task == "toy-even" and len(ev.predictions) == 12
    assert ev.metrics["accuracy"] == np.mean([p["even"] == p["target"] for p in ev.predictions])
    assert ev.metrics == r.seeds[0].metrics["test"]
    recs = heads.predict(out, ["the cat sits", "market shares fell"], model=bert)
    assert [set(r) for r in recs] == [{"text", "even", "p"}] * 2
    assert all(r["even"] == (r["p"] >= 0.5) for r in recs)
