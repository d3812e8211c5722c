"""`featstore add-labels`: a new label column joined by example id, fingerprint unchanged, bad joins refused."""
from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import featstore
from cli.featstore_cli import main
from featstore.errors import InputError
from featstore.labels import add_labels
from featstore.verify import verify
from tests.conftest import write_csv, write_jsonl


def topic(example_id: str) -> str:
    return ("sport", "politics", "tech")[sum(map(ord, example_id)) % 3]


@pytest.fixture
def store(tmp_path, shared_store):
    path = str(tmp_path / "store")
    shutil.copytree(shared_store, path)
    return path


def store_ids(path: str) -> dict[str, list[str]]:
    with featstore.open_store(path) as s:
        return {name: s.split(name).example_ids for name in s.splits}


def label_files(tmp_path, ids: dict[str, list[str]], value=topic, shuffle=True) -> dict[str, str]:
    """One file per split in another order than the store's, with the new column and unrelated extras."""
    out = {}
    for name, split_ids in ids.items():
        rows = [{"id": i, "topic": value(i), "annotator": "bob"} for i in split_ids]
        if shuffle:
            random.Random(name).shuffle(rows)
        write = write_csv if name == "validation" else write_jsonl
        out[name] = write(tmp_path / f"labels-{name}.{'csv' if name == 'validation' else 'jsonl'}", rows)
    return out


def tree(path: str) -> dict[str, bytes]:
    """Every file of a store directory and its bytes."""
    out = {}
    for dirpath, _, names in os.walk(path):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, path)] = open(p, "rb").read()
    return out


def test_add_class_column_joined_by_id(store, tmp_path):
    ids = store_ids(store)
    before = featstore.open_store(store)
    fp, old_columns = before.fingerprint, list(before.label_columns)
    old_label = before.split("train").targets("label")
    before.close()

    r = add_labels(store, label_files(tmp_path, ids), "topic", id_column="id")
    assert r.kind == "class" and r.names == ["politics", "sport", "tech"] and r.fingerprint == fp
    assert r.examples == {k: len(v) for k, v in ids.items()}

    with featstore.open_store(store) as s:
        assert s.fingerprint == fp and list(s.label_columns) == old_columns + ["topic"]
        assert s.label_names("topic") == ["politics", "sport", "tech"]
        for name in s.splits:
            sp = s.split(name)
            want = [s.label_names("topic").index(topic(i)) for i in sp.example_ids]  # storage order
            assert sp.targets("topic").tolist() == want
        np.testing.assert_array_equal(s.split("train").targets("label"), old_label)
        files = s.manifest["files"]
        assert all(f"labels/{name}/topic/zarr.json" in files for name in s.splits)
        assert s.manifest["dataset"]["label_columns"][-1]["added"]["id_column"] == "id"
    assert verify(store) == []


def test_regression_column_and_cli(store, tmp_path):
    ids = store_ids(store)
    files = label_files(tmp_path, ids, value=lambda i: len(i) / 7)
    args = ["add-labels", store, "--id-column", "id", "--label-column", "topic:regression"]
    for k, v in files.items():
        args += ["--data", f"{k}={v}"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "added label column 'topic' (regression)" in r.output and "unchanged" in r.output
    with featstore.open_store(store) as s:
        sp = s.split("test")
        np.testing.assert_allclose(sp.targets("topic"), [len(i) / 7 for i in sp.example_ids], rtol=1e-6)
    assert verify(store) == []
    r = CliRunner().invoke(main, args)  # the same column again
    assert r.exit_code == 2 and "already has label column 'topic'" in r.stderr


def _cli_error(store, files, *extra) -> str:
    args = ["add-labels", store, "--label-column", "topic", *extra]
    for k, v in files.items():
        args += ["--data", f"{k}={v}"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_duplicate_unmatched_and_missing_ids_are_refused(store, tmp_path):
    ids = store_ids(store)
    before = tree(store)

    dup = dict(ids, train=ids["train"] + [ids["train"][0]])
    err = _cli_error(store, label_files(tmp_path, dup))
    assert "split 'train'" in err and "1 duplicate id(s)" in err and repr(ids["train"][0]) in err

    extra = dict(ids, validation=ids["validation"] + ["nobody-1", "nobody-2"])
    err = _cli_error(store, label_files(tmp_path, extra))
    assert "2 id(s) not in the store (" in err and "'nobody-1'" in err and "'nobody-2'" in err

    short = dict(ids, test=ids["test"][1:])
    err = _cli_error(store, label_files(tmp_path, short))
    assert f"1 example(s) of the store without a label ({ids['test'][0]!r})" in err and "nothing was changed" in err

    files = label_files(tmp_path, ids)
    files.pop("test")
    assert "--data missing for split(s) test" in _cli_error(store, files)
    assert "column 'uid' not found" in _cli_error(store, label_files(tmp_path, ids), "--id-column", "uid")
    after = tree(store)  # not one file written, changed or removed: no stray label arrays either
    assert sorted(set(after) ^ set(before)) == [] and [f for f in before if after[f] != before[f]] == []
    assert verify(store) == []


def test_url_and_hdf5(tmp_path, shared_h5):
    with pytest.raises(InputError, match="published store and immutable: pull it"):
        add_labels("s3://bucket/glue/sst2", {"train": "x.csv"}, "topic")
    path = str(tmp_path / "s.h5")
    shutil.copyfile(shared_h5, path)
    ids = store_ids(path)
    fp = featstore.open_store(path).fingerprint
    add_labels(path, label_files(tmp_path, ids), "topic")
    with featstore.open_store(path) as s:
        assert s.fingerprint == fp and "topic" in s.label_columns
        sp = s.split("train")
        assert [s.label_names("topic")[t] for t in sp.targets("topic")] == [topic(i) for i in sp.example_ids]
        assert json.loads(json.dumps(s.manifest))["files"]["labels/train/topic"]["size"] > 0
    assert verify(path) == []
    assert not [f for f in os.listdir(tmp_path) if ".labels-" in f]  # no temporary copy left behind
