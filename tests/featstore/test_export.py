"""`featstore export`: Parquet/Arrow files whose values equal the store's pooled vectors and labels, with the
fingerprint in their metadata, opened by pyarrow, pandas and HF `datasets` (offline)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import featstore
from cli.featstore_cli import main
from featstore.errors import InputError
from featstore.export import export

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _check(table: pa.Table, store, split: str, layers: list[int], pooling: str) -> None:
    sp = store.split(split)
    meta = json.loads(table.schema.metadata[b"featstore"])
    assert meta["fingerprint"] == store.fingerprint and meta["layers"] == layers and meta["split"] == split
    assert table.column("id").to_pylist() == sp.example_ids
    np.testing.assert_array_equal(table.column("row").to_numpy(), sp.rows)
    np.testing.assert_array_equal(table.column("label").to_numpy(), sp.targets("label"))
    names = store.label_names("label")
    assert table.column("label_name").to_pylist() == [names[i] for i in sp.targets("label")]
    for k in layers:
        got = np.stack(table.column(f"L{k}").to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(got, sp.pooled(pooling, k).astype(np.float32))


def test_parquet_round_trip_and_datasets(shared_store, tmp_path, monkeypatch):
    store = featstore.open_store(shared_store)
    out = str(tmp_path / "pq")
    r = export(shared_store, out, layers="-1,1", pooling="cls")
    assert r.layers == [2, 1] and sorted(os.listdir(out)) == ["test.parquet", "train.parquet", "validation.parquet"]
    for split in store.splits:
        _check(pq.read_table(os.path.join(out, f"{split}.parquet")), store, split, [2, 1], "cls")
    import pandas as pd

    df = pd.read_parquet(os.path.join(out, "train.parquet"))
    assert len(df) == len(store.split("train")) and len(df["L2"].iloc[0]) == store.width
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_dir=out, cache_dir=str(tmp_path / "hf-cache"))
    assert set(ds) == {"train", "validation", "test"}
    np.testing.assert_array_equal(np.array(ds["validation"]["L2"], dtype=np.float32),
                                  store.split("validation").pooled("cls", 2).astype(np.float32))


def test_arrow_format_through_the_cli(shared_store, tmp_path):
    store = featstore.open_store(shared_store)
    out = str(tmp_path / "arrow")
    res = CliRunner().invoke(main, ["export", shared_store, out, "--split", "train", "--format", "arrow"])
    assert res.exit_code == 0, res.output
    assert os.listdir(out) == ["train.arrow"]
    with pa.memory_map(os.path.join(out, "train.arrow")) as f:
        _check(pa.ipc.open_file(f).read_all(), store, "train", [2], "mean")
    again = CliRunner().invoke(main, ["export", shared_store, out, "--split", "train", "--format", "arrow"])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_bad_requests_are_refused_before_writing(shared_store, tmp_path):
    out = str(tmp_path / "x")
    for kw, msg in (({"layers": "7"}, "holds layers"), ({"splits": ["dev"]}, "no split 'dev'"),
                    ({"fmt": "csv"}, "parquet or arrow")):
        with pytest.raises((InputError, featstore.StoreError), match=msg):
            export(shared_store, out, **kw)
        assert not os.path.exists(out) or os.listdir(out) == []
    p = subprocess.run([sys.executable, "-m", "featstore", "export", shared_store, out, "--layers", "x"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
