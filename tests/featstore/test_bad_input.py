"""Every bad input: one clear line on stderr, exit code 2, no traceback, nothing marked complete."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cli.featstore_cli import main
from featstore.store import local_backend
from tests.conftest import make_rows, write_csv, write_jsonl


def run(args):
    result = CliRunner().invoke(main, args)
    return result


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # handled: no traceback
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for f in fragments:
        assert f in err, err


def base(model, data, out, *extra):
    args = ["extract", "--model", model, "--out", str(out), "--text-column", "text", "--quiet"]
    for k, v in data.items():
        args += ["--data", f"{k}={v}"]
    return args + list(extra)


@pytest.fixture
def train(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", make_rows(8, 1))


def test_missing_file(bert, tmp_path):
    assert_user_error(run(base(bert, {"train": tmp_path / "nope.csv"}, tmp_path / "s")), "input file not found", "nope.csv")


def test_missing_column(bert, train, tmp_path):
    r = run(base(bert, {"train": train}, tmp_path / "s", "--label-column", "sentiment"))
    assert_user_error(r, "label column 'sentiment' not found", "columns are")
    r = run(base(bert, {"train": train}, tmp_path / "s", "--text-pair-column", "sentence2"))
    assert_user_error(r, "column 'sentence2' not found")


def test_empty_split(bert, train, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    assert_user_error(run(base(bert, {"train": train, "test": empty}, tmp_path / "s")), "split 'test'", "is empty")


@pytest.mark.parametrize("bad", [None, 5])
def test_null_or_non_text(bert, tmp_path, bad):
    rows = make_rows(4, 1)
    rows[2]["text"] = bad
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    kind = "null" if bad is None else "int"
    assert_user_error(run(base(bert, {"train": path}, tmp_path / "s")), "row 2", f"is {kind}, not text")


def test_label_absent_from_train_with_strict_labels(bert, train, tmp_path):
    rows = make_rows(4, 2)
    rows[1]["label"] = "surprise"
    dev = write_csv(tmp_path / "dev.csv", rows)
    r = run(base(bert, {"train": train, "validation": dev}, tmp_path / "s", "--label-column", "label",
                 "--strict-labels"))
    assert_user_error(r, "'surprise'", "does not occur in the training split")


def test_unknown_layer(bert, train, tmp_path):
    assert_user_error(run(base(bert, {"train": train}, tmp_path / "s", "--layers", "7")), "unknown layer index 7",
                      "0..2")
    assert_user_error(run(base(bert, {"train": train}, tmp_path / "s", "--layers", "last")), "bad --layers")


def test_unknown_model(train, tmp_path):
    assert_user_error(run(base("no-such-org/no-such-model", {"train": train}, tmp_path / "s")), "unknown model")
    assert_user_error(run(base(str(tmp_path / "missing-dir"), {"train": train}, tmp_path / "s")), "unknown model",
                      "no such directory")


def test_out_is_not_a_store(bert, train, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("do not delete")
    for extra in ([], ["--overwrite"]):
        r = run(base(bert, {"train": train}, tmp_path / "precious", *extra))
        assert_user_error(r, "exists and is not a featstore store")
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "do not delete"
    (tmp_path / "file.h5").write_text("not hdf5")
    assert_user_error(run(base(bert, {"train": train}, tmp_path / "file.h5", "--format", "hdf5")),
                      "exists and is not a featstore store")


def test_different_settings_refused_then_overwrite(bert, train, tmp_path):
    out = tmp_path / "s"
    assert run(base(bert, {"train": train}, out, "--max-length", "24")).exit_code == 0
    r = run(base(bert, {"train": train}, out, "--max-length", "16"))
    assert_user_error(r, "holds a different store", "max_length (24 vs 16)", "--overwrite")
    r = run(base(bert, {"train": train}, out, "--max-length", "24"))
    assert r.exit_code == 0 and "already complete" in r.output
    r = run(base(bert, {"train": train}, out, "--max-length", "16", "--overwrite"))
    assert r.exit_code == 0, r.output
    assert json.load(open(out / "manifest.json"))["settings"]["max_length"] == 16


@pytest.fixture(scope="module")
def overflowing_model(tmp_path_factory):
    """A BERT that overflows float16 in one layer (1, the middle one) and for one word ("election") only, like
    DeBERTa's rare overflows: the word's embedding points along one dimension, which layer 1's output LayerNorm
    scales past 65504 (others stay below 40000 there; layers 0 and 2 are normalised to a few units)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tests.conftest import build_model

    path = build_model("bert", str(tmp_path_factory.mktemp("m") / "overflow"))
    model = AutoModel.from_pretrained(path)
    word = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids("election")
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[word] = 0.0
        model.embeddings.word_embeddings.weight[word, 5] = 100.0
        model.encoder.layer[0].output.LayerNorm.weight[5] = 14000.0  # hidden_states[1]
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_non_finite_features(overflowing_model, tmp_path, fmt):
    rows = make_rows(8, 1)
    for r in rows:
        r["text"] = " ".join(w for w in r["text"].split() if w != "election") or "the"
    rows[3]["id"], rows[3]["text"] = "the-one", "the election " + rows[3]["text"]  # neither first nor longest
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / ("s.h5" if fmt == "hdf5" else "s")
    r = run(base(overflowing_model, {"train": train}, out, "--layers", "0,1,2", "--format", fmt, "--id-column", "id"))
    assert_user_error(r, "non-finite features in layer 1 for example 'the-one' (split 'train', row 3) when stored as "
                         "float16", "--dtype bfloat16 or float32")
    manifest = local_backend(str(out), fmt).read_manifest()
    assert manifest is not None and manifest["complete"] is False
    r = run(["info", str(out)])
    assert r.exit_code == 0 and "INCOMPLETE" in r.output
    from featstore import StoreError, open_store

    with pytest.raises(StoreError, match="incomplete"):
        open_store(str(out))
    # float32 keeps them, exactly: the same input extracts, and the large values read back
    ok = str(tmp_path / ("ok.h5" if fmt == "hdf5" else "ok"))
    r = run(base(overflowing_model, {"train": train}, ok, "--layers", "1", "--dtype", "float32", "--format", fmt,
                 "--id-column", "id"))
    assert r.exit_code == 0, r.output
    with open_store(ok) as s:
        sp = s.split("train")
        peak = {i: float(np.abs(sp.example(j, [1])).max()) for j, i in enumerate(sp.example_ids)}
    assert peak.pop("the-one") > 65504 > max(peak.values())


def test_open_and_verify_missing_store(tmp_path):
    assert_user_error(run(["info", str(tmp_path / "nothing")]), "no store at")
    r = run(["verify", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no store at" in r.stderr


def test_foreign_hdf5_file_and_foreign_manifest_are_never_replaced(bert, train, tmp_path):
    import h5py

    precious = tmp_path / "precious.h5"
    with h5py.File(precious, "w") as f:
        f["thesis"] = [1, 2, 3]
    webapp = tmp_path / "webapp"
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "my web app"}')
    (webapp / "index.html").write_text("<html/>")
    for extra in ([], ["--overwrite"]):
        assert_user_error(run(base(bert, {"train": train}, precious, "--format", "hdf5", *extra)),
                          "exists and is not a featstore store")
        assert_user_error(run(base(bert, {"train": train}, webapp, *extra)), "exists and is not a featstore store")
    with h5py.File(precious, "r") as f:
        assert list(f) == ["thesis"]
    assert (webapp / "index.html").exists()


@pytest.mark.parametrize("value, fragment", [("inf", "infinite"), ("nan", "is missing")])
def test_non_finite_label_values(bert, tmp_path, value, fragment):
    rows = [{"text": f"t {i}", "score": str(0.5 + i)} for i in range(4)]
    rows[1]["score"] = value
    path = write_csv(tmp_path / "t.csv", rows)
    r = run(base(bert, {"train": path}, tmp_path / "s", "--label-column", "score:regression"))
    assert_user_error(r, fragment)


def test_unreadable_inputs(bert, tmp_path):
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    assert_user_error(run(base(bert, {"train": latin1}, tmp_path / "s")), "not UTF-8")
    arr = tmp_path / "arr.jsonl"
    arr.write_text('{"text": "a"}\n[1, 2]\n')
    assert_user_error(run(base(bert, {"train": arr}, tmp_path / "s")), "arr.jsonl:2", "not an object")
    pq = tmp_path / "broken.parquet"
    pq.write_bytes(b"PAR1 this is not parquet")
    assert_user_error(run(base(bert, {"train": pq}, tmp_path / "s")), "not a readable Parquet file")
    dd = tmp_path / "dd"
    dd.mkdir()
    (dd / "dataset_dict.json").write_text("{not json")
    r = run(["extract", "--model", bert, "--out", str(tmp_path / "s"), "--data", str(dd), "--quiet"])
    assert_user_error(r, "dataset_dict.json is damaged")


def test_bad_out_device_and_compression(bert, train, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_user_error(run(base(bert, {"train": train}, tmp_path / "afile" / "s")), "is a file, not a directory")
    assert_user_error(run(base(bert, {"train": train}, "s3://bucket/s", "--format", "hdf5")), "takes --format zarr",
                      "featstore push")
    assert_user_error(run(base(bert, {"train": train}, tmp_path / "s", "--device", "bogus")), "--device 'bogus'")
    assert_user_error(run(base(bert, {"train": train}, tmp_path / "s", "--compression", "zstdd")),
                      "--compression 'zstdd'")
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_damaged_model_files(bert, train, tmp_path):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(bert, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert_user_error(run(base(str(broken), {"train": train}, tmp_path / "s")), "is damaged", "re-download")


def test_empty_text_refused_unless_allowed(bert, tmp_path):
    rows = make_rows(6, 1)
    rows[3]["text"] = "   "
    data = {"train": write_jsonl(tmp_path / "train.jsonl", rows)}
    out = tmp_path / "s"
    assert_user_error(run(base(bert, data, out)), "split 'train'", "row 3", "column 'text' is empty",
                      "--allow-empty-text")
    assert not out.exists()  # refused before anything was written
    r = run(base(bert, data, out, "--allow-empty-text", "--max-length", "16"))
    assert r.exit_code == 0, r.output
    import featstore

    with featstore.open_store(str(out)) as s:
        sp = s.split("train")
        assert len(sp) == 6 and sp.lengths.min() == 2  # the empty text: [CLS] [SEP]
