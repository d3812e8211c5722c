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


@pytest.mark.parametrize("encoding", ["int8", "fp8"])
@pytest.mark.parametrize("in_ram", [True, False])
def test_codes_stay_codes_until_decoded_per_batch(tmp_path, encoding, in_ram):
    """A split of an 8-bit store is held as codes (a quarter of float32's bytes); batches are decoded on the
    loader's thread (CPU) or carry the codes to be decoded by `to_device` (GPU). Both equal the reader's
    decoding row for row, across segments, with zero padding."""
    import torch

    from heads.data import Features, Loader
    from heads.runtime import to_device

    path = classification_store(str(tmp_path / encoding), encoding=encoding, n_train=300, n_dev=20, n_test=20)
    with featstore.open_store(path) as s:
        sp = s.split("train")
        assert len(sp.segments) > 2  # rows from several segments, each with its own channel tables
        src = Features.from_split(sp, "tokens", [2, 1], in_ram=in_ram)
        # held as codes: vs 2 * 16 * 4 bytes per token decoded to float32
        assert src.held_bytes == (sp.n_tokens * (2 * (16 + 4) + 4) if in_ram else 0)
        want = np.stack([sp.tokens(2, 0, sp.n_tokens), sp.tokens(1, 0, sp.n_tokens)], axis=1)  # (N, L, D)
        assert np.allclose(src.rows(0, len(src)), want, atol=1e-5)
        for codes_out in (False, True):
            seen = 0
            for batch in Loader(src, None, 16, shuffle=True, seed=3, codes_out=codes_out).epoch(1):
                if codes_out:
                    assert batch.x.dtype == (np.int8 if encoding == "int8" else np.uint8) and batch.codec is not None
                else:
                    assert batch.x.dtype == np.float32 and batch.codec is None
                x, mask = to_device(batch, torch.device("cpu"))
                assert x.dtype == torch.float32 and x.shape == batch.x.shape
                for b, i in enumerate(batch.index):
                    n, a = int(sp.lengths[i]), int(sp.offsets[i])
                    assert np.allclose(x[b, :n].numpy(), want[a:a + n], atol=1e-5)
                    assert not x[b, n:].any()  # padding is 0, as float batches are padded
                seen += len(batch.index)
            assert seen == len(sp)
