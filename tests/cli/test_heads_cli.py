"""`heads` through click's CliRunner: --help of every command, a train/eval round, and every bad input:
one clear line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from cli.heads_cli import main
from tests.heads.synthetic import classification_store

TINY = ["--d-head", "16", "--n-layers", "1", "--n-heads", "2", "--epochs", "2", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("heads_cli")
    small = dict(n_train=60, n_dev=20, n_test=20)
    e = {
        "store": classification_store(str(d / "store"), **small),
        "other": classification_store(str(d / "other"), **small, min_len=6),  # other texts: other fingerprint
        "narrow": classification_store(str(d / "narrow"), **small, hidden=8),
        "run": str(d / "run"),
    }
    r = invoke(["train", "ytuning", "--store", e["store"], "--label-column", "label", "--out", e["run"], *TINY])
    assert r.exit_code == 0, r.output
    return e


def invoke(args):
    return CliRunner().invoke(main, args)


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit)  # handled: no traceback
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for f in fragments:
        assert f in err, err


def train_args(env, tmp_path, *extra, head="ytuning"):
    return ["train", head, "--store", env["store"], "--label-column", "label", "--out", str(tmp_path / "out"),
            *TINY, *extra]


@pytest.mark.parametrize("cmd", [[], ["train"], ["eval"], ["predict"], ["compare"], ["export"]])
def test_help(cmd):
    r = invoke(cmd + ["--help"])
    assert r.exit_code == 0 and "Usage:" in r.output


def test_train_table_and_json(env, tmp_path):
    r = invoke(["train", "linear", "--store", env["store"], "--label-column", "label", "--out", str(tmp_path / "lin"),
                "--seeds", "0,1", "--epochs", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    for frag in ("accuracy", "macro_f1", "mcc", "validation (dev)", "test", "±", "trainable parameters",
                 "% of the 1.0M-parameter backbone", "time per epoch"):
        assert frag in r.stdout, r.stdout
    r = invoke(["train", "mlp", "--store", env["store"], "--label-column", "label", "--out", str(tmp_path / "mlp"),
                "--epochs", "1", "--quiet", "--json"])
    d = json.loads(r.stdout)
    assert d["head"] == "mlp" and d["primary_metric"] == "accuracy" and "test" in d["summary"]


def test_eval(env, tmp_path):
    r = invoke(["eval", env["run"], "--store", env["store"], "--split", "validation", "--json",
                "--predictions", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    metrics = json.load(open(os.path.join(env["run"], "metrics.json")))
    assert d["metrics"] == metrics["seeds"]["0"]["validation"] and d["n_examples"] == 20
    assert len(open(tmp_path / "p.jsonl").readlines()) == 20
    r = invoke(["eval", env["run"], "--store", env["store"], "--threads", "1"])
    assert r.exit_code == 0 and "accuracy" in r.stdout and "[test]" in r.stdout


# -- bad input -----------------------------------------------------------------------------------------------

def test_unknown_split(env, tmp_path):
    assert_user_error(invoke(train_args(env, tmp_path, "--train-split", "training")), "no split 'training'", "train, validation, test")
    assert_user_error(invoke(["eval", env["run"], "--store", env["store"], "--split", "dev"]), "no split 'dev'")


def test_unknown_label_column(env, tmp_path):
    r = invoke(["train", "ytuning", "--store", env["store"], "--label-column", "sentiment", "--out", str(tmp_path / "o")])
    assert_user_error(r, "no label column 'sentiment'", "it has label")


def test_text_label_column_for_regression(env, tmp_path):
    assert_user_error(invoke(train_args(env, tmp_path, "--task", "regression")), "label column 'label' is text",
                      "'alpha'", "regression needs a numeric column")


def test_store_without_requested_layers(env, tmp_path):
    assert_user_error(invoke(train_args(env, tmp_path, "--layers", "5")), "store lacks layers [5]", "it holds [1, 2]")
    assert_user_error(invoke(train_args(env, tmp_path, "--layers", "-3")), "holds only 2 layers")


def test_no_dev_split(tmp_path):
    store = classification_store(str(tmp_path / "nodev"), n_train=30, n_test=10, splits=("train", "test"))
    args = ["train", "linear", "--store", store, "--label-column", "label", "--out", str(tmp_path / "o"), "--quiet"]
    assert_user_error(invoke(args), "no dev split 'validation'", "--dev-split none")
    assert invoke(args + ["--dev-split", "none"]).exit_code == 0


def test_existing_out(env, tmp_path):
    os.makedirs(tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert_user_error(invoke(train_args(env, tmp_path, head="linear")), "is not a head directory")
    assert_user_error(invoke(train_args(env, tmp_path, "--overwrite", head="linear")), "is not a head directory")
    shutil.rmtree(tmp_path / "out")
    assert invoke(train_args(env, tmp_path, head="linear")).exit_code == 0
    assert_user_error(invoke(train_args(env, tmp_path, head="linear")), "already exists", "--overwrite")
    assert invoke(train_args(env, tmp_path, "--overwrite", head="linear")).exit_code == 0


def test_bad_options(env, tmp_path):
    assert_user_error(invoke(train_args(env, tmp_path, "--seeds", "a,b")), "bad --seeds")
    assert_user_error(invoke(train_args(env, tmp_path, "--max-memory", "lots")), "bad --max-memory")
    r = invoke(train_args(env, tmp_path, "--epochs", "0", "--dropout", "2", "--d-head", "15"))
    assert_user_error(r, "--epochs", "--dropout", "--d-head 15 is not divisible")  # every problem at once
    assert_user_error(invoke(train_args(env, tmp_path, "--label-init", "prior", head="linear")), "ytuning heads only")
    assert_user_error(invoke(train_args(env, tmp_path, "--threads", "0")), "--threads 0")
    assert_user_error(invoke(["eval", env["run"], "--store", env["store"], "--threads", "0"]), "--threads 0")
    assert_user_error(invoke(["train", "linear", "--store", str(tmp_path / "none"), "--label-column", "label",
                              "--out", str(tmp_path / "o")]), "no store at")


def _copy_run(env, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(env["run"], run)
    return run


def test_corrupt_weights(env, tmp_path):
    run = _copy_run(env, tmp_path)
    with open(os.path.join(run, "head.safetensors"), "wb") as f:
        f.write(b"\x00garbage" * 10)
    assert_user_error(invoke(["eval", run, "--store", env["store"]]), "head.safetensors is corrupt")
    os.remove(os.path.join(run, "head.safetensors"))
    assert_user_error(invoke(["eval", run, "--store", env["store"]]), "head.safetensors is missing")


def test_weights_of_another_architecture(env, tmp_path):
    run = _copy_run(env, tmp_path)
    meta = json.load(open(os.path.join(run, "head.json")))
    meta["architecture"]["d_head"] = 32
    json.dump(meta, open(os.path.join(run, "head.json"), "w"))
    assert_user_error(invoke(["eval", run, "--store", env["store"]]), "weights do not fit the architecture")


def test_invalid_head_json(env, tmp_path):
    run = _copy_run(env, tmp_path)
    with open(os.path.join(run, "head.json"), "w") as f:
        f.write("{not json")
    assert_user_error(invoke(["eval", run, "--store", env["store"]]), "head.json is not valid JSON")
    assert_user_error(invoke(["predict", run, "--text", "hello"]), "head.json is not valid JSON")
    assert_user_error(invoke(["eval", str(tmp_path / "nothing"), "--store", env["store"]]), "no head at")


def test_other_format_version(env, tmp_path):
    run = _copy_run(env, tmp_path)
    meta = json.load(open(os.path.join(run, "head.json")))
    meta["format_version"] = 99
    json.dump(meta, open(os.path.join(run, "head.json"), "w"))
    assert_user_error(invoke(["eval", run, "--store", env["store"]]), "head format version 99", "reads version 1")


def test_store_with_other_features(env):
    assert_user_error(invoke(["eval", env["run"], "--store", env["other"]]), "does not fit head",
                      "features differ", "data of split")
    assert_user_error(invoke(["eval", env["run"], "--store", env["narrow"]]), "hidden size is 8", "hidden size 16")


def test_store_missing_the_heads_layers(env, tmp_path):
    from tests.heads.synthetic import planted_classification, write_store

    feats, y = planted_classification(20, 0, n_layers=1)
    store = write_store(str(tmp_path / "one"), {"test": {"features": feats, "targets": {"label": y}}}, layers=[2],
                        hidden=16, label_columns=[{"name": "label", "kind": "class",
                                                   "names": ["alpha", "beta", "gamma", "delta"]}])
    assert_user_error(invoke(["eval", env["run"], "--store", store]), "lacks layers [1]")


def test_predict_usage(env):
    r = invoke(["predict", env["run"]])
    assert r.exit_code == 2 and "nothing to predict" in r.output
    r = invoke(["predict", env["run"], "--text", "a", "--input", "f.txt"])
    assert r.exit_code == 2 and "not both" in r.output


@pytest.mark.parametrize("field, value", [("best_seed", "x"), ("best_seed", None), ("backbone", None),
                                          ("store.model", None), ("label_names", ["only-one"]),
                                          ("label_names", None), ("backbone.settings", {}),
                                          ("store.tokenizer", {}), ("seeds", [2 ** 64]),
                                          ("decisions", "x"), ("decisions", {"0": {"threshold": "high"}})])
def test_damaged_head_json_fields(env, tmp_path, field, value):
    run = _copy_run(env, tmp_path)
    meta = json.load(open(os.path.join(run, "head.json")))
    *parents, key = field.split(".")
    node = meta
    for p in parents:
        node = node[p]
    node[key] = value
    json.dump(meta, open(os.path.join(run, "head.json"), "w"))
    r = invoke(["eval", run, "--store", env["store"]])
    assert_user_error(r, "head.json" if field != "label_names" else "", "damaged")
    assert_user_error(invoke(["predict", run, "--text", "hello"]), "damaged")


def test_bad_paths_fail_before_training(env, tmp_path):
    (tmp_path / "afile").write_text("x")
    r = invoke(["train", "linear", "--store", env["store"], "--label-column", "label", "--out",
                str(tmp_path / "afile" / "run"), *TINY])
    assert_user_error(r, "is a file, not a directory")
    assert_user_error(invoke(["eval", env["run"], "--store", env["store"], "--predictions",
                              str(tmp_path / "no" / "dir" / "p.jsonl")]), "--predictions", "not a writable directory")
    assert_user_error(invoke(["predict", env["run"], "--text", "hi", "--output", str(tmp_path / "no" / "o.jsonl")]),
                      "--output", "not a writable directory")
    assert_user_error(invoke(train_args(env, tmp_path, "--seeds", str(2 ** 64))), "below 2**63")
    assert_user_error(invoke(train_args(env, tmp_path, "--lr", "inf")), "--lr inf")
    assert_user_error(invoke(["compare", str(tmp_path / "afile")]), "no head at")


def test_diverging_training_is_refused_and_nothing_written(env, tmp_path):
    r = invoke(train_args(env, tmp_path, "--lr", "1e30", "--grad-clip", "0", "--warmup", "0", head="mlp"))
    assert_user_error(r, "training diverged", "lower --lr")
    assert not (tmp_path / "out").exists()


def test_compare_with_damaged_metrics(env, tmp_path):
    run = _copy_run(env, tmp_path)
    os.remove(os.path.join(run, "metrics.json"))
    assert_user_error(invoke(["compare", run]), "metrics.json is missing or damaged")
