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


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_pooled_probes_learn_what_pooling_shows_and_only_that(stores, tmp_path, head):
    """The same probe learns a class that shows in mean pooling (the control: a dead probe fails here) and stays
    near chance on the planted store, whose class only attention can read."""
    cfg = dict(label_column="label", layers="all", pooling="mean", epochs=10, lr=0.02, progress=False)
    seen = train(TrainConfig(head, store=stores["pooled"], out=str(tmp_path / "pooled"), **cfg))
    hidden = train(TrainConfig(head, store=stores["cls"], out=str(tmp_path / "cls"), **cfg))
    a, b = seen.summary["test"]["accuracy"]["mean"], hidden.summary["test"]["accuracy"]["mean"]
    print(f"{head} on mean pooling: test accuracy {a:.4f} on a pooled signal, {b:.4f} on the planted one")
    assert a >= 0.95 and b < 0.70


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
    """`stars` is a class column whose names are numbers other than its class ids (class i is named
    10 * (i + 1)): --task regression regresses on the numbers the names say, and learns them."""
    from .synthetic import STARS

    out = str(tmp_path / "stars")
    r = train(TrainConfig("linear", store=stores["reg"], label_column="stars", task="regression", layers="all",
                          out=out, epochs=10, lr=0.02, progress=False))
    assert r.task == "regression" and r.summary["test"]["pearson"]["mean"] >= 0.4  # pooling dilutes the target
    ev = evaluate(out, stores["reg"], "test")
    with featstore.open_store(stores["reg"]) as s:
        sp = s.split("test")
        ids = sp.targets("stars")[sp.input_order()]  # class ids, in input order like the predictions
    assert [p["target"] for p in ev.predictions] == [float(STARS[i]) for i in ids]
    preds, targets = (np.array([p[k] for p in ev.predictions]) for k in ("prediction", "target"))
    assert abs(preds.mean() - targets.mean()) < 3  # on the names' scale
    assert ev.metrics["mse"] == pytest.approx(np.mean((preds - targets) ** 2), rel=1e-4)
    assert ev.metrics["mse"] < 0.9 * targets.var()  # better than the mean
    assert json.load(open(os.path.join(out, "head.json")))["label_values"] == [float(x) for x in STARS]


def test_artefacts(ytuning_run):
    out, r = ytuning_run
    assert sorted(os.listdir(out)) == ["head.json", "head.safetensors", "metrics.json", "seeds", "train_log.jsonl"]
    assert sorted(os.listdir(os.path.join(out, "seeds"))) == ["0", "1"]
    head = json.load(open(os.path.join(out, "head.json")))
    store = featstore.open_store(head["store"]["path"])
    assert head["format_version"] == 1 and head["head"] == "ytuning" and head["label_column"] == "label"
    assert head["label_names"] == ["alpha", "beta", "gamma", "delta"] and head["layers"] == [0, 1, 2]
    assert head["store"]["fingerprint"] == store.fingerprint and head["store"]["hidden_size"] == 16
    assert head["backbone"]["name"] == "synthetic-encoder" and head["backbone"]["settings"]["layers"] == [0, 1, 2]
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
    x = torch.randn(3, 7, 3, 16)  # (B, T, L, D)
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


def test_label_prior_sets_the_initial_queries(stores, tmp_path):
    """--label-init prior starts the label queries from the store's label-name features (all stored layers, in
    order) through the initial layer mix and projection, centred and scaled; random init does not."""
    cfg = dict(store=stores["cls"], label_column="label", seeds=[0],
               **{**SMALL, "epochs": 1, "lr": 1e-12, "warmup": 0.0, "dropout": 0.0})  # weights stay as initialised
    train(TrainConfig("ytuning", out=str(tmp_path / "prior"), label_init="prior", **cfg))
    train(TrainConfig("ytuning", out=str(tmp_path / "random"), **cfg))
    prior, rand = load_head(str(tmp_path / "prior")).model, load_head(str(tmp_path / "random")).model
    torch.testing.assert_close(prior.proj[1].weight, rand.proj[1].weight)  # the same seed: the same other weights
    assert not torch.allclose(prior.queries, rand.queries, atol=0.1)
    with featstore.open_store(stores["cls"]) as s:
        feats = np.stack([s.label_features("label", k) for k in s.layers], axis=1)  # (Y, L, D)
    with torch.no_grad():
        want = prior.memory(torch.as_tensor(feats))  # (Y, d)
        want = want - want.mean(0)
        want = want / want.std(-1, keepdim=True)
    torch.testing.assert_close(prior.queries.detach(), want, atol=1e-4, rtol=1e-4)


def test_config_reports_every_problem_at_once(stores):
    cfg = TrainConfig("ytuning", store=stores["cls"], label_column="label", out="x", epochs=0, batch_size=-1,
                      dropout=1.5, d_head=30, n_heads=4, seeds=[])
    with pytest.raises(InputError) as e:
        cfg.validate()
    msg = str(e.value)
    for frag in ("--epochs", "--batch-size", "--dropout", "--d-head 30 is not divisible", "--seeds"):
        assert frag in msg


def test_schedule_warms_up_then_decays():
    from heads.trainer import lr_factor

    total, warm = 100, 10
    assert [lr_factor(s, total, warm, "linear") for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, total, warm, "linear") == pytest.approx(1.0)
    assert lr_factor(55, total, warm, "linear") == pytest.approx(0.5)
    assert lr_factor(100, total, warm, "linear") == pytest.approx(0.0)
    assert lr_factor(55, total, warm, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, total, warm, "cosine") < 0.01 and lr_factor(80, total, warm, "constant") == 1.0


def test_early_stopping_keeps_the_best_epoch(stores, tmp_path):
    """With --patience 2 training stops two epochs after the dev metric last improved, and the head that is
    saved and tested is the best epoch's: the very weights of a run that ended at that epoch, not the last's."""
    cfg = dict(store=stores["pooled"], label_column="label", layers="all", lr=0.005, schedule="constant",
               warmup=0.0, progress=False)
    r = train(TrainConfig("linear", out=str(tmp_path / "es"), epochs=30, patience=2, **cfg))
    s = r.seeds[0]
    log = [json.loads(x) for x in open(tmp_path / "es" / "train_log.jsonl")]
    dev = [rec["dev"]["accuracy"] for rec in log]
    assert 1 < s.best_epoch < s.epochs_run == s.best_epoch + 2 < 30 and len(log) == s.epochs_run
    assert dev[s.best_epoch - 1] == max(dev) >= 0.95 and max(dev[s.best_epoch:]) <= dev[s.best_epoch - 1]
    assert dev[0] < dev[s.best_epoch - 1]  # it learned: the best epoch is not where it started
    assert s.metrics["validation"]["accuracy"] == dev[s.best_epoch - 1]
    # the same seed and constant schedule, no model selection, ended at the best epoch: the saved weights are those
    plain = dict(cfg, dev_split="none", patience=None)
    ref = train(TrainConfig("linear", out=str(tmp_path / "ref"), epochs=s.best_epoch, **plain))
    a, b = load_head(str(tmp_path / "es")).model.state_dict(), load_head(str(tmp_path / "ref")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert ref.seeds[0].metrics["test"] == s.metrics["test"]
    train(TrainConfig("linear", out=str(tmp_path / "last"), epochs=s.epochs_run, **plain))
    c = load_head(str(tmp_path / "last")).model.state_dict()
    assert not all(torch.equal(c[k], b[k]) for k in b)  # training went on changing the head after the best epoch
