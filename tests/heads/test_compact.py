"""Heads train on 8-bit stores unchanged: the reader decodes, the heads never see codes."""
from __future__ import annotations

import numpy as np
import pytest

import featstore
from featstore.verify import info, verify
from heads import TrainConfig, train

from .conftest import SMALL
from .synthetic import classification_store


@pytest.mark.parametrize("encoding", ["int8", "fp8"])
def test_ytuning_on_8bit_store(tmp_path, encoding):
    kw = dict(n_train=300, n_dev=80, n_test=120, signal=5.0)
    ref = classification_store(str(tmp_path / "f32"), **kw)
    path = classification_store(str(tmp_path / encoding), encoding=encoding, **kw)
    with featstore.open_store(path) as s, featstore.open_store(ref) as r:
        assert s.encoding == encoding and s.dtype == "float32" and r.encoding == "float16"
        a, b = s.split("test"), r.split("test")
        x, y = a.tokens(2, 0, a.n_tokens), b.tokens(2, 0, b.n_tokens).astype(np.float32)
        assert x.dtype == np.float32 and x.shape == y.shape
        assert np.linalg.norm(x - y) / np.linalg.norm(y) < (0.01 if encoding == "int8" else 0.04)
        p, q = a.pooled("mean", 1), b.pooled("mean", 1).astype(np.float32)
        assert np.linalg.norm(p - q) / np.linalg.norm(q) < 0.04
        assert np.allclose(a.example(3), np.concatenate([a.tokens(k, a.offsets[3], a.offsets[4])[:, None]
                                                         for k in s.layers], axis=1))
    assert verify(path) == []
    d = info(path)
    assert d["encoding"] == encoding and d["bytes_per_token"] == 2 * (16 + 4)
    r = train(TrainConfig("ytuning", store=path, label_column="label", out=str(tmp_path / "run"),
                          **{**SMALL, "epochs": 12}))
    assert r.summary["test"]["accuracy"]["mean"] >= 0.9
    lin = train(TrainConfig("linear", store=path, label_column="label", out=str(tmp_path / "lin"), pooling="cls",
                            epochs=2, progress=False))
    assert "accuracy" in lin.summary["test"]
