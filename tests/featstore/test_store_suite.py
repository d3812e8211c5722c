"""One suite, run against both physical formats and both tiny encoders: what goes in comes back out."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import featstore
from featstore.errors import StoreError
from featstore.extract import ExtractConfig, extract
from featstore.verify import info, verify

LAYERS = [0, 1, 2]
TOL = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-5}


def out_path(tmp_path, fmt: str) -> str:
    return str(tmp_path / ("store.h5" if fmt == "hdf5" else "store"))


@pytest.fixture(params=["zarr", "hdf5"])
def fmt(request):
    return request.param


@pytest.fixture(params=["deberta", "bert"])
def model_path(request, models_dir):
    return models_dir[request.param]


@pytest.fixture
def store(tmp_path, fmt, model_path, splits):
    cfg = ExtractConfig(model=model_path, data=splits, out=out_path(tmp_path, fmt), text_column="text",
                        label_columns=["label", "score"], id_column="id", layers="0,1,-1", max_length=24,
                        format=fmt, batch_tokens=64, segment_mb=0.002, progress=False)
    summary = extract(cfg)
    assert summary.segments_total > 3  # several segments, so reads span segment boundaries
    s = featstore.open_store(cfg.out)
    yield s
    s.close()


def direct_forward(model_path: str, text: str, max_length: int):
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    return enc["input_ids"][0].numpy(), [h[0].numpy() for h in hs]


def test_features_equal_direct_forward(store, model_path, splits):
    import json

    assert store.layers == LAYERS
    train = store.split("train")
    rows = [json.loads(x) for x in open(splits["train"])]
    for i in (0, len(train) // 2, len(train) - 1):  # longest, middle, shortest
        row = int(train.rows[i])
        ids, hs = direct_forward(model_path, rows[row]["text"], 24)
        assert train.example_ids[i] == rows[row]["id"]
        np.testing.assert_array_equal(train.input_ids(i), ids)
        feats = train.example(i)  # (T, L, D)
        assert feats.shape == (len(ids), len(LAYERS), 32)
        for j, k in enumerate(LAYERS):
            np.testing.assert_allclose(feats[:, j].astype(np.float32), hs[k], atol=TOL["float16"] * 4, rtol=TOL["float16"])
            np.testing.assert_allclose(train.pooled("cls", k)[i], hs[k][0], atol=8e-3, rtol=2e-3)
            np.testing.assert_allclose(train.pooled("mean", k)[i], hs[k].mean(0), atol=8e-3, rtol=2e-3)


def test_storage_order_and_targets(store, splits):
    import json

    for name in ("train", "validation", "test"):
        sp = store.split(name)
        assert np.all(np.diff(sp.lengths) <= 0)  # length-bucketed: longest first
        assert sorted(sp.rows.tolist()) == list(range(len(sp)))
        labels = store.label_names("label")
        assert labels == ["neg", "neutral", "pos"]
        rows = featstore_rows(splits[name])
        want = [labels.index(rows[r]["label"]) for r in sp.rows]
        assert sp.targets("label").tolist() == want
        np.testing.assert_allclose(sp.targets("score"), [float(rows[r]["score"]) for r in sp.rows], rtol=1e-6)
        assert store.label_columns["score"]["kind"] == "regression"
        order = sp.input_order()
        assert [sp.example_ids[i] for i in order] == [r["id"] for r in rows]
    lf = store.label_features("label", 2)
    assert lf.shape == (3, 32) and np.isfinite(lf).all()


def featstore_rows(path):
    import json

    import pyarrow.parquet as pq

    from featstore.extract.inputs import read_table

    cols = read_table(path)
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


def test_info_and_verify(store):
    d = info(store.path)
    assert d["complete"] and d["layers"] == LAYERS and d["splits"]["train"]["examples"] == 40
    assert d["bytes"] > 0 and d["fingerprint"] == store.fingerprint
    assert verify(store.path) == []


def test_token_ranges_span_segments(store):
    sp = store.split("train")
    whole = sp.tokens(1, 0, sp.n_tokens)
    assert whole.shape == (sp.n_tokens, 32)
    a, b = 3, sp.n_tokens - 5
    np.testing.assert_array_equal(sp.tokens(1, a, b), whole[a:b])


def test_same_fingerprint_across_formats_and_batch_sizes(tmp_path, bert, splits):
    base = dict(model=bert, data=splits, text_column="text", layers="-1", max_length=24, progress=False)
    a = extract(ExtractConfig(**base, out=str(tmp_path / "a"), batch_tokens=32))
    b = extract(ExtractConfig(**base, out=str(tmp_path / "b.h5"), format="hdf5", batch_tokens=512))
    c = extract(ExtractConfig(**{**base, "max_length": 16}, out=str(tmp_path / "c")))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    sa, sb = featstore.open_store(a.out), featstore.open_store(b.out)
    np.testing.assert_allclose(sa.split("test").pooled("mean", 2), sb.split("test").pooled("mean", 2), atol=1e-3)


def test_text_pairs_and_hf_dataset_dir(tmp_path, bert):
    datasets = pytest.importorskip("datasets")
    from tests.conftest import make_rows

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(make_rows(10, 5)),
                               "test": datasets.Dataset.from_list(make_rows(4, 6))})
    dd.save_to_disk(str(tmp_path / "hf"))
    from featstore.extract.inputs import parse_split_specs

    cfg = ExtractConfig(model=bert, data=parse_split_specs([str(tmp_path / "hf")]), out=str(tmp_path / "s"),
                        text_column="text", pair_column="text2", label_columns=["label"], progress=False)
    extract(cfg)
    s = featstore.open_store(cfg.out)
    assert s.splits == ["train", "test"] and len(s.split("test")) == 4
    tok = AutoTokenizer.from_pretrained(bert)
    rows = make_rows(10, 5)
    i = 0
    r = rows[int(s.split("train").rows[i])]
    np.testing.assert_array_equal(s.split("train").input_ids(i), tok(r["text"], r["text2"])["input_ids"])


def test_incomplete_store_is_refused(tmp_path):
    import json
    import os

    os.makedirs(tmp_path / "s")
    from featstore.store.manifest import FORMAT_VERSION

    (tmp_path / "s" / "manifest.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION, "fingerprint": "x", "model": {"hidden_size": 32}, "tokenizer": {},
        "settings": {"dtype": "float16", "layers": [1]}, "dataset": {"splits": {}, "label_columns": []},
        "complete": False}))
    with pytest.raises(StoreError, match="incomplete"):
        featstore.open_store(str(tmp_path / "s"))


def test_other_format_version_is_refused(tmp_path):
    import json
    import os

    os.makedirs(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(StoreError, match="format version 99"):
        featstore.open_store(str(tmp_path / "s"))


def test_forward_stops_after_deepest_layer_and_truncation_is_counted(tmp_path, bert, splits):
    import json

    from featstore.extract.models import load_model, truncate_after

    lm = load_model(bert)
    truncate_after(lm.model, 1)
    assert len(lm.model.encoder.layer) == 1  # layer 2 is never computed
    summary = extract(ExtractConfig(model=bert, data={"train": splits["train"]}, out=str(tmp_path / "s"),
                                    text_column="text", layers="1", max_length=12, progress=False))
    rows = [json.loads(x) for x in open(splits["train"])]
    tok = AutoTokenizer.from_pretrained(bert)
    assert summary.truncated == sum(len(tok(r["text"])["input_ids"]) > 12 for r in rows) > 0
    with featstore.open_store(str(tmp_path / "s")) as s:
        train = s.split("train")
        assert s.layers == [1] and s.manifest["dataset"]["splits"]["train"]["truncated"] == summary.truncated
        i = len(train) // 2
        ids, hs = direct_forward(bert, rows[int(train.rows[i])]["text"], 12)
        np.testing.assert_allclose(train.example(i)[:, 0].astype(np.float32), hs[1], atol=8e-3, rtol=2e-3)


def test_compressed_store_reads_the_same(tmp_path, bert, splits):
    """--compression goes through zarr's codec pipeline instead of raw chunks: same values, same fingerprint."""
    common = dict(model=bert, data=splits, text_column="text", label_columns=["label"], layers="1,2", max_length=24,
                  segment_mb=0.002, progress=False)
    extract(ExtractConfig(out=str(tmp_path / "raw"), **common))
    extract(ExtractConfig(out=str(tmp_path / "zstd"), compression="zstd", **common))
    assert verify(str(tmp_path / "zstd")) == []
    import glob
    import json

    meta = json.load(open(sorted(glob.glob(str(tmp_path / "zstd/segments/train/*/L1/tokens/zarr.json")))[0]))
    assert "zstd" in [c["name"] for c in meta["codecs"]]  # really written through the codec pipeline
    with featstore.open_store(str(tmp_path / "raw")) as a, featstore.open_store(str(tmp_path / "zstd")) as b:
        assert a.fingerprint == b.fingerprint and b.manifest["layout"]["compression"] == "zstd"
        for name in a.splits:
            x, y = a.split(name), b.split(name)
            np.testing.assert_array_equal(x.targets("label"), y.targets("label"))
            for k in (1, 2):
                np.testing.assert_array_equal(x.tokens(k, 0, x.n_tokens), y.tokens(k, 0, y.n_tokens))
                np.testing.assert_array_equal(x.pooled("mean", k), y.pooled("mean", k))
