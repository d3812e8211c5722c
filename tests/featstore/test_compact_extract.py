"""8-bit extraction end to end on a tiny real model: what is stored, what readers return, info and verify."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import featstore
from cli.featstore_cli import main
from featstore.extract import ExtractConfig, extract
from featstore.verify import info, verify
from tests.heads.synthetic import classification_store

from .test_bad_input import assert_user_error

BOUND = {"int8": 0.02, "fp8": 0.05}  # relative error vs the float16 store, whole split


@pytest.fixture(scope="module")
def tiny_stores(tmp_path_factory, bert, splits):
    d = tmp_path_factory.mktemp("compact")
    common = dict(model=bert, data=splits, label_columns=["label"], id_column="id", layers="1,2", max_length=24,
                  segment_mb=0.03, progress=False)
    out = {}
    for enc, fmt in (("float16", "zarr"), ("int8", "zarr"), ("fp8", "hdf5")):
        path = str(d / (enc + (".h5" if fmt == "hdf5" else "")))
        extract(ExtractConfig(**common, out=path, encoding=None if enc == "float16" else enc, format=fmt))
        out[enc] = path
    return out


def rel(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


@pytest.mark.parametrize("enc", ["int8", "fp8"])
def test_8bit_store_equals_float16_within_error(tiny_stores, enc):
    with featstore.open_store(tiny_stores["float16"]) as ref, featstore.open_store(tiny_stores[enc]) as s:
        assert s.encoding == enc and s.dtype == "float32" and ref.encoding == "float16"
        assert s.manifest["settings"]["encoding"] == enc and "encoding" not in ref.manifest["settings"]
        assert s.fingerprint != ref.fingerprint
        for split in ref.splits:
            a, b = s.split(split), ref.split(split)
            assert a.n_tokens == b.n_tokens and np.array_equal(a.rows, b.rows)
            for k in ref.layers:
                x, y = a.tokens(k, 0, a.n_tokens), b.tokens(k, 0, b.n_tokens).astype(np.float32)
                assert x.dtype == np.float32 and rel(x, y) < BOUND[enc]
                for kind in ("cls", "mean"):
                    assert rel(a.pooled(kind, k), b.pooled(kind, k).astype(np.float32)) < BOUND[enc]
        raw = s.split("train").segment_array(0, "L1/tokens")
        assert np.asarray(raw[:2]).dtype == (np.int8 if enc == "int8" else np.uint8)
        assert np.allclose(s.label_features("label", 1), ref.label_features("label", 1), atol=1e-2)
    assert verify(tiny_stores[enc]) == []
    d = info(tiny_stores[enc])
    assert d["encoding"] == enc and d["bytes_per_token"] == 2 * (32 + 4)  # tiny bert: hidden 32
    assert info(tiny_stores["float16"])["bytes_per_token"] == 2 * 32 * 2


def test_resume_and_fingerprint_keep_the_encoding(tiny_stores, bert, splits):
    """Re-running the same 8-bit command is a no-op; another encoding at the same --out is refused."""
    common = dict(model=bert, data=splits, label_columns=["label"], id_column="id", layers="1,2", max_length=24,
                  segment_mb=0.03, progress=False, out=tiny_stores["int8"])
    assert extract(ExtractConfig(**common, encoding="int8")).already_complete
    with pytest.raises(featstore.StoreError, match="encoding"):
        extract(ExtractConfig(**common, encoding="fp8"))


def test_cli_encoding_flags(tmp_path, bert, splits):
    base = ["extract", "--model", bert, "--data", f"train={splits['train']}", "--quiet", "--max-length", "16"]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "a"), "--encoding", "int9"])
    assert r.exit_code == 2 and "int9" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert_user_error(CliRunner().invoke(main, base + ["--out", str(tmp_path / "b"), "--encoding", "int8",
                                                       "--dtype", "float16"]), "drop --dtype")
    assert_user_error(CliRunner().invoke(main, base + ["--out", str(tmp_path / "c"), "--encoding", "float32",
                                                       "--dtype", "float16"]), "contradicts")
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "d"), "--encoding", "fp8"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["info", str(tmp_path / "d")])
    assert "encoding fp8 (read as float32)" in r.output and "per token" in r.output
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "e"), "--dtype", "bfloat16"])
    assert r.exit_code == 0 and featstore.open_store(str(tmp_path / "e")).encoding == "bfloat16"


def test_manifest_encoding_validated(tmp_path):
    path = classification_store(str(tmp_path / "s"), n_train=20, n_dev=5, n_test=5, encoding="int8")
    mpath = tmp_path / "s" / "manifest.json"
    m = json.loads(mpath.read_text())
    for bad, what in (({"encoding": "int4"}, "encoding 'int4' unknown"),
                      ({"encoding": "int8", "dtype": "float16"}, "contradicts")):
        mpath.write_text(json.dumps({**m, "settings": {**m["settings"], **bad}}))
        with pytest.raises(featstore.StoreError, match=what):
            featstore.open_store(str(tmp_path / "s"))


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_verify_names_a_bad_scale(tmp_path, fmt):
    """A writer that stored an infinite scale (checksums match what it wrote) is caught by the value scan,
    by name; bytes changed after writing are a checksum mismatch first (the scan never runs on them)."""
    def tamper(arrays):
        if "L2/tokens_scale" in arrays:
            arrays["L2/tokens_scale"][1] = np.inf

    path = str(tmp_path / ("s.h5" if fmt == "hdf5" else "s"))
    classification_store(path, n_train=20, n_dev=5, n_test=5, encoding="int8", fmt=fmt, tamper=tamper)
    problems = verify(path)
    assert problems and all("layer 2 tokens: scales not finite and positive" in p for p in problems), problems
    assert verify(path, check_values=False) == []

    def nan_code(arrays):
        arrays["L1/cls"][0, 0] = 0x7F

    path = str(tmp_path / ("f.h5" if fmt == "hdf5" else "f"))
    classification_store(path, n_train=20, n_dev=5, n_test=5, encoding="fp8", fmt=fmt, tamper=nan_code)
    assert any("layer 1 cls: NaN codes" in p for p in verify(path))


# -- convert ------------------------------------------------------------------------------------------------

def test_convert_equals_extracting_with_that_encoding(tiny_stores, tmp_path):
    from featstore.convert import convert

    dst = str(tmp_path / "conv")
    r = CliRunner().invoke(main, ["convert", tiny_stores["float16"], dst, "--encoding", "int8", "--layers", "2"])
    assert r.exit_code == 0, r.output
    with featstore.open_store(dst) as c, featstore.open_store(tiny_stores["int8"]) as e, \
            featstore.open_store(tiny_stores["float16"]) as f:
        assert c.layers == [2] and c.encoding == "int8"
        d = c.manifest["derived_from"]
        assert d["fingerprint"] == f.fingerprint and d["url"] == tiny_stores["float16"]
        assert d["transform"] == {"encoding": "int8", "layers": [2]}
        assert c.fingerprint not in (f.fingerprint, e.fingerprint)
        assert c.label_names("label") == f.label_names("label")
        assert np.array_equal(c.label_features("label", 2), f.label_features("label", 2))
        for split in f.splits:
            a, b, g = c.split(split), e.split(split), f.split(split)
            assert a.example_ids == g.example_ids and np.array_equal(a.targets("label"), g.targets("label"))
            x, y = a.tokens(2, 0, a.n_tokens), b.tokens(2, 0, b.n_tokens)
            assert rel(x, y) < 2 * BOUND["int8"]
            assert rel(x, g.tokens(2, 0, g.n_tokens).astype(np.float32)) < BOUND["int8"]
            assert rel(a.pooled("cls", 2), b.pooled("cls", 2)) < 2 * BOUND["int8"]
    assert verify(dst) == []
    # to a float encoding and another format: float16 -> float32 is exact
    h5 = str(tmp_path / "conv.h5")
    convert(tiny_stores["float16"], h5, "float32", fmt="hdf5")
    with featstore.open_store(h5) as c, featstore.open_store(tiny_stores["float16"]) as f:
        assert c.encoding == "float32" and c.layers == f.layers
        assert np.array_equal(c.split("test").pooled("mean", 1), f.split("test").pooled("mean", 1).astype(np.float32))
    # bf16 from an 8-bit source, then back: readers still decode
    bf = str(tmp_path / "bf")
    convert(tiny_stores["fp8"], bf, "bfloat16")
    with featstore.open_store(bf) as c, featstore.open_store(tiny_stores["fp8"]) as s:
        x, y = c.split("train").tokens(1, 0, 50), s.split("train").tokens(1, 0, 50)
        assert rel(x, y) < 0.01
    assert_user_error(CliRunner().invoke(main, ["convert", tiny_stores["float16"], str(tmp_path / "x"),
                                                "--encoding", "int8", "--layers", "7"]), "holds layers [1, 2]")
    r = CliRunner().invoke(main, ["convert", tiny_stores["float16"], str(tmp_path / "y"), "--encoding", "int4"])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert_user_error(CliRunner().invoke(main, ["convert", tiny_stores["float16"], dst, "--encoding", "fp8"]),
                      "holds a different store")
    assert convert(tiny_stores["fp8"], bf, "bfloat16").already_complete  # fmt defaults to the source's: hdf5


def test_interrupted_convert_resumes(tiny_stores, tmp_path, monkeypatch):
    """Killed after two committed segments: the re-run skips them and ends with the same store as one run."""
    from featstore.convert import convert
    from featstore.store import local_backend

    full = convert(tiny_stores["float16"], str(tmp_path / "full"), "fp8")
    cls = type(local_backend(str(tmp_path / "x"), "zarr"))
    real, calls = cls.commit_segment, []

    def flaky(self, pending, meta):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(meta["name"])
        return real(self, pending, meta)

    monkeypatch.setattr(cls, "commit_segment", flaky)
    dst = str(tmp_path / "part")
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_stores["float16"], dst, "fp8")
    with pytest.raises(featstore.StoreError, match="incomplete"):
        featstore.open_store(dst)
    monkeypatch.setattr(cls, "commit_segment", real)
    r = convert(tiny_stores["float16"], dst, "fp8")
    assert r.segments_resumed == 2 and r.segments_total == full.segments_total > 2
    assert r.fingerprint == full.fingerprint
    with featstore.open_store(dst) as a, featstore.open_store(str(tmp_path / "full")) as b:
        for split in a.splits:
            sa, sb = a.split(split), b.split(split)
            assert np.array_equal(sa.tokens(2, 0, sa.n_tokens), sb.tokens(2, 0, sb.n_tokens))
    assert verify(dst) == []
    assert convert(tiny_stores["float16"], dst, "fp8").already_complete


def test_convert_reads_a_store_from_object_storage(tiny_stores, tmp_path, s3_env):
    """`featstore convert s3://... DST`, in its own process: the published store is read through the verified
    cache, and the result equals converting the local original (same derived fingerprint, same arrays)."""
    import os
    import subprocess
    import sys
    import uuid

    from featstore.convert import convert
    from featstore.share.transfer import push

    from .conftest import BUCKET, ROOT

    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/tiny"
    push(tiny_stores["float16"], url)
    local = convert(tiny_stores["float16"], str(tmp_path / "local"), "int8", layers="2")
    dst = str(tmp_path / "from-s3")
    r = subprocess.run([sys.executable, "-m", "cli.featstore_cli", "convert", url, dst, "--encoding", "int8",
                        "--layers", "2"], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    with featstore.open_store(dst) as c, featstore.open_store(str(tmp_path / "local")) as ref:
        assert c.fingerprint == local.fingerprint == ref.fingerprint
        assert c.manifest["derived_from"]["url"] == url
        for split in ref.splits:
            a, b = c.split(split), ref.split(split)
            assert np.array_equal(a.tokens(2, 0, a.n_tokens), b.tokens(2, 0, b.n_tokens))
    assert verify(dst) == []
