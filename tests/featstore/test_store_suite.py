"""One suite, run against both physical formats and both tiny encoders: what goes in comes back out."""
from __future__ import annotations

import functools

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
# Every stored dtype in both formats, each model in both formats; one extraction per case for the module.
CASES = [("zarr", "deberta", "float16"), ("hdf5", "bert", "float16"), ("hdf5", "deberta", "bfloat16"),
         ("zarr", "bert", "bfloat16"), ("zarr", "bert", "float32"), ("hdf5", "bert", "float32")]


def out_path(tmp_path, fmt: str) -> str:
    return str(tmp_path / ("store.h5" if fmt == "hdf5" else "store"))


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def case(request, tmp_path_factory, models_dir, splits):
    """A store per (format, model, dtype), shared by the read-only tests below."""
    fmt, model, dtype = request.param
    cfg = ExtractConfig(model=models_dir[model], data=splits, out=out_path(tmp_path_factory.mktemp("suite"), fmt),
                        text_column="text", label_columns=["label", "score"], id_column="id", layers="0,1,-1",
                        max_length=24, dtype=dtype, format=fmt, batch_tokens=64, segment_mb=0.002, progress=False)
    summary = extract(cfg)
    assert summary.segments_total > 3  # several segments, so reads span segment boundaries
    s = featstore.open_store(cfg.out)
    yield {"store": s, "model": models_dir[model], "dtype": dtype, "fmt": fmt}
    s.close()


@pytest.fixture
def store(case):
    return case["store"]


@functools.lru_cache(maxsize=None)
def _loaded(model_path: str):
    return AutoTokenizer.from_pretrained(model_path), AutoModel.from_pretrained(model_path).eval()


def direct_forward(model_path: str, text: str, max_length: int):
    """The model's own hidden states for one text, alone (no batch mates, no padding), in float32."""
    tok, model = _loaded(model_path)
    enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    return enc["input_ids"][0].numpy(), [h[0].numpy() for h in hs]


def test_features_equal_direct_forward(case, splits):
    """Read back, every stored dtype and format: tokens and pooled vectors equal the model's forward within
    the dtype's rounding."""
    import json

    store, tol = case["store"], TOL[case["dtype"]]
    assert store.layers == LAYERS and store.dtype == case["dtype"]
    assert store.manifest["format"] == case["fmt"]
    train = store.split("train")
    rows = [json.loads(x) for x in open(splits["train"])]
    for i in (0, len(train) // 2, len(train) - 1):  # longest, middle, shortest
        row = int(train.rows[i])
        ids, hs = direct_forward(case["model"], rows[row]["text"], 24)
        assert train.example_ids[i] == rows[row]["id"]
        np.testing.assert_array_equal(train.input_ids(i), ids)
        feats = train.example(i)  # (T, L, D)
        assert feats.shape == (len(ids), len(LAYERS), 32) and feats.dtype == np.dtype(
            np.float16 if case["dtype"] == "float16" else np.float32)
        for j, k in enumerate(LAYERS):
            np.testing.assert_allclose(feats[:, j].astype(np.float32), hs[k], atol=tol * 4, rtol=tol)
            np.testing.assert_allclose(train.pooled("cls", k)[i], hs[k][0], atol=tol * 4, rtol=tol)
            np.testing.assert_allclose(train.pooled("mean", k)[i], hs[k].mean(0), atol=tol * 4, rtol=tol)


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


def test_label_name_features_are_the_names_extracted_as_texts(case):
    """Each label name's features: its tokens' mean, as the model computes it for the name given as a text."""
    store = case["store"]
    names = store.label_names("label")
    assert names == ["neg", "neutral", "pos"] and store.label_features("score", 2) is None  # regression: no names
    for k in LAYERS:
        want = np.stack([direct_forward(case["model"], name, 24)[1][k].mean(0) for name in names])  # (Y, D)
        np.testing.assert_allclose(store.label_features("label", k), want, atol=1e-4, rtol=1e-4, err_msg=f"L{k}")


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


def test_fingerprint_tracks_exactly_what_determines_the_features(tmp_path, bert, bert_variants):
    """README: the fingerprint changes with the weights, tokenizer, layers, dtype, max length and texts, and not
    with the labels, batch size, device or format (which the manifest records all the same)."""
    from tests.conftest import make_rows, write_jsonl

    rows = make_rows(6, 31, max_words=12)
    data = {"train": write_jsonl(tmp_path / "d.jsonl", rows)}
    relabelled = {"train": write_jsonl(tmp_path / "l.jsonl", [{**r, "label": "yes" if i % 2 else "no"}
                                                               for i, r in enumerate(rows)])}
    retexted = {"train": write_jsonl(tmp_path / "t.jsonl", [{**r, "text": r["text"] + " red"} if i == 3 else r
                                                            for i, r in enumerate(rows)])}
    manifests = {}

    def fp(name: str, **kw) -> str:
        cfg = {**dict(model=bert, data=data, label_columns=["label"], layers="1", max_length=16, progress=False), **kw}
        out = str(tmp_path / (name + (".h5" if cfg.get("format") == "hdf5" else "")))
        summary = extract(ExtractConfig(out=out, **cfg))
        with featstore.open_store(out) as s:
            manifests[name] = s.manifest
        return summary.fingerprint

    base = fp("base")
    same = {"labels": fp("labels", data=relabelled), "no labels": fp("no labels", label_columns=[]),
            "batch size": fp("batch size", batch_tokens=16), "device": fp("device", device="cpu"),
            "format": fp("format", format="hdf5")}
    differ = {"weights": fp("weights", model=bert_variants["weights"]),
              "tokenizer": fp("tokenizer", model=bert_variants["tokenizer"]), "layers": fp("layers", layers="2"),
              "dtype": fp("dtype", dtype="bfloat16"), "max_length": fp("max_length", max_length=12),
              "texts": fp("texts", data=retexted)}
    assert [k for k, v in same.items() if v != base] == []
    assert [k for k, v in differ.items() if v == base] == [] and len(set(differ.values())) == len(differ)
    # what did not count was seen: it is in the manifest, outside the fingerprint
    assert manifests["labels"]["dataset"]["label_columns"] != manifests["base"]["dataset"]["label_columns"]
    assert manifests["batch size"]["runtime"]["batch_tokens"] != manifests["base"]["runtime"]["batch_tokens"]
    assert manifests["format"]["format"] == "hdf5"
    with featstore.open_store(str(tmp_path / "base")) as a, featstore.open_store(str(tmp_path / "format.h5")) as b:
        for k in ("tokens", "cls", "mean"):
            x, y = a.split("train"), b.split("train")
            got = (x.tokens(1, 0, x.n_tokens), y.tokens(1, 0, y.n_tokens)) if k == "tokens" else \
                (x.pooled(k, 1), y.pooled(k, 1))
            np.testing.assert_array_equal(*got)


@pytest.mark.parametrize("model", ["deberta", "bert"])
def test_features_do_not_depend_on_batch_mates_or_padding(tmp_path, models_dir, splits, model):
    """The same texts extracted one per batch (no padding) and all in one padded batch: every token and pooled
    vector of every layer agrees within the stored dtype's tolerance."""
    common = dict(model=models_dir[model], data={"validation": splits["validation"]}, layers="0,1,2",
                  max_length=24, dtype="float32", progress=False)
    alone = extract(ExtractConfig(out=str(tmp_path / "alone"), batch_tokens=1, **common))
    together = extract(ExtractConfig(out=str(tmp_path / "together"), batch_tokens=1 << 16, **common))
    assert alone.fingerprint == together.fingerprint
    tol = TOL["float32"]
    with featstore.open_store(alone.out) as a, featstore.open_store(together.out) as b:
        x, y = a.split("validation"), b.split("validation")
        assert len(set(x.lengths.tolist())) > 3  # one batch of several lengths: padded
        np.testing.assert_array_equal(x.rows, y.rows)
        for k in LAYERS:
            np.testing.assert_allclose(x.tokens(k, 0, x.n_tokens), y.tokens(k, 0, y.n_tokens), atol=tol * 4,
                                       rtol=tol, err_msg=f"layer {k}")
            for kind in ("cls", "mean"):
                np.testing.assert_allclose(x.pooled(kind, k), y.pooled(kind, k), atol=tol * 4, rtol=tol,
                                           err_msg=f"layer {k} {kind}")


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
