"""Training on planted signals, the dev/test protocol, seeds, streaming, artefacts and the save/load round trip."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import featstore
from heads import TrainConfig, evaluate, load_head, train
from heads.errors import InputError, StoreError

from .conftest import SMALL


def test_ytuning_learns_what_only_attention_can_see(ytuning_run):
    out, r = ytuning_run
    acc = r.summary["test"]["accuracy"]
    print(f"ytuning planted-signal test accuracy {acc['mean']:.4f} ± {acc['std']:.4f}")
    assert acc["mean"] >= 0.95 and all(s.metrics["test"]["accuracy"] >= 0.95 for s in r.seeds)
    assert r.primary_metric == "accuracy" and r.task == "classification"
    assert 0 < r.trainable_parameters and r.trainable_percent == pytest.approx(100 * r.trainable_parameters / 1e6)


@pytest.mark.parametrize("head,layers", [("linear", "all"), ("mlp", "all")])
def test_pooled_probes_cannot(stores, tmp_path, head, layers):
    r = train(TrainConfig(head, store=stores["cls"], label_column="label", out=str(tmp_path / head), layers=layers,
                          pooling="mean", epochs=10, progress=False))
    acc = r.summary["test"]["accuracy"]["mean"]
    print(f"{head} on mean pooling, planted-signal test accuracy {acc:.4f}")
    assert acc < 0.70


def test_regression_planted_linear_target(stores, tmp_path):
    r = train(TrainConfig("ytuning", store=stores["reg"], label_column="score", out=str(tmp_path / "reg"),
                          **{**SMALL, "epochs": 20, "dropout": 0.0}))
    p = r.summary["test"]["pearson"]["mean"]
    print(f"ytuning planted regression test pearson {p:.4f}")
    assert r.task == "regression" and r.primary_metric == "pearson"
    assert p >= 0.95 and r.summary["test"]["spearman"]["mean"] >= 0.9
    head = json.load(open(tmp_path / "reg" / "head.json"))
    assert head["architecture"]["task"] == "regression" and head["label_names"] is None


def test_regression_on_numeric_class_column(stores, tmp_path):
    """`stars` is a class column named 0..4: --task regression regresses on those numbers."""
    r = train(TrainConfig("linear", store=stores["reg"], label_column="stars", task="regression", layers="all",
                          out=str(tmp_path / "stars"), epochs=2, progress=False))
    assert r.task == "regression" and np.isfinite(r.summary["test"]["pearson"]["mean"])


def test_artefacts(ytuning_run):
    out, r = ytuning_run
    assert sorted(os.listdir(out)) == ["head.json", "head.safetensors", "metrics.json", "seeds", "train_log.jsonl"]
    assert sorted(os.listdir(os.path.join(out, "seeds"))) == ["0", "1"]
    head = json.load(open(os.path.join(out, "head.json")))
    store = featstore.open_store(head["store"]["path"])
    assert head["format_version"] == 1 and head["head"] == "ytuning" and head["label_column"] == "label"
    assert head["label_names"] == ["alpha", "beta", "gamma", "delta"] and head["layers"] == [1, 2]
    assert head["store"]["fingerprint"] == store.fingerprint and head["store"]["hidden_size"] == 16
    assert head["backbone"]["name"] == "synthetic-encoder" and head["backbone"]["settings"]["layers"] == [1, 2]
    assert head["metrics"]["test"]["accuracy"]["mean"] == r.summary["test"]["accuracy"]["mean"]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert set(metrics["seeds"]) == {"0", "1"} and metrics["primary_metric"] == "accuracy"
    for split in ("train", "validation", "test"):
        for m in ("accuracy", "macro_f1", "mcc"):
            s = metrics["summary"][split][m]
            vals = [metrics["seeds"][k][split][m] for k in ("0", "1")]
            assert s["mean"] == pytest.approx(np.mean(vals)) and s["std"] == pytest.approx(np.std(vals, ddof=1))
    log = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]
    assert {rec["seed"] for rec in log} == {0, 1}
    assert all({"train_loss", "lr", "seconds", "dev"} <= set(rec) for rec in log)
    # the dev split picks the epoch: the best epoch's dev accuracy is the best in the log
    for s in r.seeds:
        devs = [rec["dev"]["accuracy"] for rec in log if rec["seed"] == s.seed]
        assert devs[s.best_epoch - 1] == max(devs) == s.metrics["validation"]["accuracy"]
    store.close()


def test_reload_evaluates_identically(ytuning_run, stores):
    """head dir -> load -> eval reproduces the training run's test metrics for every seed."""
    out, r = ytuning_run
    for s in r.seeds:
        e = evaluate(out, stores["cls"], "test", seed=s.seed)
        assert e.metrics == s.metrics["test"]
    best = evaluate(out, stores["cls"], "test")
    assert best.seed == r.best_seed and best.metrics == next(s for s in r.seeds if s.seed == r.best_seed).metrics["test"]
    assert len(best.predictions) == 200 and best.predictions[0]["row"] == 0
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in best.predictions)


def test_save_load_round_trip_same_outputs(ytuning_run):
    out, _ = ytuning_run
    a, b = load_head(out), load_head(out)
    x = torch.randn(3, 7, 2, 16)  # (B, T, L, D)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        assert torch.equal(a.model(x, mask), b.model(x, mask))
    from safetensors.torch import load_file

    saved = load_file(os.path.join(out, "seeds", str(a.seed), "head.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in a.model.state_dict().items())


def test_same_seed_same_metrics_and_streaming_changes_nothing(stores, tmp_path):
    cfg = dict(store=stores["cls"], label_column="label", seeds=[3], **{**SMALL, "epochs": 3})
    a = train(TrainConfig("ytuning", out=str(tmp_path / "a"), **cfg))
    b = train(TrainConfig("ytuning", out=str(tmp_path / "b"), **cfg))
    c = train(TrainConfig("ytuning", out=str(tmp_path / "c"), max_memory=0, **cfg))  # every split streamed
    assert a.in_ram == {"train": True, "validation": True, "test": True}
    assert c.in_ram == {"train": False, "validation": False, "test": False}
    assert a.seeds[0].metrics == b.seeds[0].metrics == c.seeds[0].metrics
    wa, wc = load_head(str(tmp_path / "a")).model.state_dict(), load_head(str(tmp_path / "c")).model.state_dict()
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def test_no_dev_split_refused_unless_explicit(stores, tmp_path):
    cfg = dict(store=stores["nodev"], label_column="label", **{**SMALL, "epochs": 2})
    with pytest.raises(StoreError, match="no dev split 'validation'.*--dev-split none"):
        train(TrainConfig("ytuning", out=str(tmp_path / "x"), **cfg))
    assert not os.path.exists(tmp_path / "x")
    r = train(TrainConfig("ytuning", out=str(tmp_path / "y"), dev_split="none", **cfg))
    assert r.splits["dev"] is None and set(r.summary) == {"train", "test"}
    assert r.seeds[0].best_epoch == r.seeds[0].epochs_run == 2  # the last epoch is kept


def test_dev_split_is_never_the_reported_split(stores, tmp_path):
    with pytest.raises(InputError, match="never the reported one"):
        train(TrainConfig("linear", store=stores["cls"], label_column="label", out=str(tmp_path / "x"),
                          dev_split="test", test_split="test"))


def test_hdf5_store_and_label_prior(stores, tmp_path):
    r = train(TrainConfig("ytuning", store=stores["h5"], label_column="label", out=str(tmp_path / "h5"),
                          label_init="prior", **{**SMALL, "epochs": 2}))
    assert set(r.summary) == {"train", "validation", "test"}
    head = load_head(str(tmp_path / "h5"))
    assert head.meta["training"]["label_init"] == "prior"


def test_config_reports_every_problem_at_once(stores):
    cfg = TrainConfig("ytuning", store=stores["cls"], label_column="label", out="x", epochs=0, batch_size=-1,
                      dropout=1.5, d_head=30, n_heads=4, seeds=[])
    with pytest.raises(InputError) as e:
        cfg.validate()
    msg = str(e.value)
    for frag in ("--epochs", "--batch-size", "--dropout", "--d-head 30 is not divisible", "--seeds"):
        assert frag in msg


def test_schedule_warms_up_then_decays():
    from heads.train import lr_factor

    total, warm = 100, 10
    assert [lr_factor(s, total, warm, "linear") for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, total, warm, "linear") == pytest.approx(1.0)
    assert lr_factor(55, total, warm, "linear") == pytest.approx(0.5)
    assert lr_factor(100, total, warm, "linear") == pytest.approx(0.0)
    assert lr_factor(55, total, warm, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, total, warm, "cosine") < 0.01 and lr_factor(80, total, warm, "constant") == 1.0


def test_early_stopping_keeps_the_best_epoch(stores, tmp_path):
    """With --patience 1 training stops one epoch after the dev metric last improved, and the head that is
    saved and tested is the best epoch's, not the last one's."""
    r = train(TrainConfig("linear", store=stores["cls"], label_column="label", out=str(tmp_path / "es"),
                          layers="all", epochs=30, patience=1, lr=0.05, progress=False))
    s = r.seeds[0]
    assert s.epochs_run < 30 and s.epochs_run == s.best_epoch + 1
    log = [json.loads(x) for x in open(tmp_path / "es" / "train_log.jsonl")]
    dev = [rec["dev"]["accuracy"] for rec in log]
    assert len(log) == s.epochs_run and max(dev) == dev[s.best_epoch - 1] > dev[-1] - 1e-12
    assert s.metrics["validation"]["accuracy"] == pytest.approx(dev[s.best_epoch - 1])
