"""One suite run against every storage backend (Zarr, HDF5, and the read-only remote backend over the moto
S3 server) on synthetic arrays: no model, no forward pass."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import featstore
from featstore.errors import StoreError
from featstore.share import push
from featstore.store import StorageBackend, local_backend, open_backend
from featstore.store.manifest import all_files
from featstore.verify import verify

from ..heads.synthetic import write_store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HIDDEN = 8


def _features(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(2, 9)), 2, HIDDEN)).astype(np.float32) for _ in range(n)]


def _store(path: str, fmt: str) -> tuple[str, dict[str, list[np.ndarray]]]:
    """A complete store of 2 splits over several segments; returns (path, input-order features per split)."""
    feats = {"train": _features(30, 1), "test": _features(9, 2)}
    data = {k: {"features": v, "targets": {"label": np.arange(len(v)) % 2}} for k, v in feats.items()}
    write_store(path, data, layers=[1, 2], hidden=HIDDEN, fmt=fmt, segment_tokens=40,
                label_columns=[{"name": "label", "kind": "class", "names": ["a", "b"]}])
    return path, feats


def _segment_arrays(n_tokens: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"offsets": np.array([0, 2, n_tokens], dtype=np.int64), "length": np.array([2, n_tokens - 2], np.int32),
            "L1/tokens": rng.standard_normal((n_tokens, HIDDEN)).astype(np.float16)}


@pytest.fixture(params=["zarr", "hdf5", "remote"])
def kind(request):
    if request.param == "remote":
        request.getfixturevalue("s3_env")
    return request.param


@pytest.fixture
def complete(kind, tmp_path):
    """(path or URL to read, input features, local store it came from) for every backend kind."""
    fmt = "hdf5" if kind == "hdf5" else "zarr"
    local, feats = _store(str(tmp_path / ("s.h5" if fmt == "hdf5" else "s")), fmt)
    if kind != "remote":
        return local, feats, local
    from .conftest import BUCKET

    url = f"s3://{BUCKET}/{tmp_path.name}/s"
    push(local, url, progress=False)
    return url, feats, local


def _abstract(cls) -> set[str]:
    return {n for n, v in vars(cls).items() if getattr(v, "__isabstractmethod__", False)}


def test_every_operation_is_abstract_and_implemented():
    from featstore.store import StoreReader
    from featstore.store.backends import BACKENDS, URL_WRITERS
    from featstore.store.remote_backend import RemoteBackend

    for cls in (StoreReader, StorageBackend):
        with pytest.raises(TypeError):
            cls("x")  # an ABC
    assert {"read_manifest", "array", "checksum", "exists", "prefetch", "close"} <= _abstract(StoreReader)
    assert {"write_segment", "commit_segment", "committed_segments", "finalize", "add_arrays", "publication",
            "install_pulled", "check_target"} <= _abstract(StorageBackend)
    for cls in (*BACKENDS.values(), *URL_WRITERS.values()):
        assert issubclass(cls, StorageBackend) and not cls.__abstractmethods__, cls
    # the remote backend is a reader only: no write stubs, and writing through it is refused in one line
    assert issubclass(RemoteBackend, StoreReader) and not issubclass(RemoteBackend, StorageBackend)
    assert not RemoteBackend.__abstractmethods__
    assert not hasattr(RemoteBackend, "write_segment")


def test_published_store_refuses_writes(complete):
    where, _, _ = complete
    with featstore.open_store(where) as store:
        if store.backend.read_only:
            with pytest.raises(StoreError, match="read-only; pull it"):
                store.backend.writable()
        else:
            assert store.backend.writable() is store.backend


def test_reads_back_what_was_written(complete):
    where, feats, _ = complete
    with featstore.open_store(where) as store:
        for name, inputs in feats.items():
            sp = store.split(name)
            assert len(sp.segments) > 1 or name == "test"
            for i in range(len(sp)):
                want = inputs[int(sp.rows[i])]  # (T, L, D)
                np.testing.assert_allclose(sp.example(i), want, atol=2e-3, rtol=2e-3)  # float16 storage


def test_checksums_match_the_manifest(complete):
    where, _, _ = complete
    with featstore.open_store(where) as store:
        files = all_files(store.manifest)
        assert files
        for name, meta in files.items():
            assert store.backend.checksum(name) == (meta["size"], meta["sha256"]), name


def test_capabilities_are_declared(complete, kind):
    where, _, _ = complete
    with featstore.open_store(where) as store:
        b = store.backend
        writes = isinstance(b, StorageBackend) and b.supports_append
        assert (b.read_only, b.is_remote, writes) == ((True, True, False) if kind == "remote" else (False, False, True))


def test_remote_refuses_every_write(complete, kind):
    if kind != "remote":
        pytest.skip("local backends are writable")
    where, _, _ = complete
    b = open_backend(where)
    with pytest.raises(StoreError, match="read-only"):
        b.writable()  # what every writer of an opened store goes through (add-labels, token labels)
    for op in ("write_segment", "create", "remove", "write_manifest", "write_arrays", "finalize", "add_arrays",
               "committed_segments", "check_target", "publication"):
        assert not hasattr(b, op), op  # a reader has no write operations, not even stubs


def _corrupt(kind: str, local: str, where: str, rel: str) -> None:
    if kind == "remote":
        import fsspec

        fs, path = fsspec.core.url_to_fs(f"{where}/{rel}")
        data = bytearray(fs.cat_file(path))
        data[0] ^= 0xFF
        fs.pipe_file(path, bytes(data))
    elif kind == "zarr":
        with open(os.path.join(local, rel), "r+b") as f:
            b = f.read(1)
            f.seek(0)
            f.write(bytes([b[0] ^ 0xFF]))
    else:
        import h5py

        with h5py.File(local, "r+") as f:
            ds = f[rel]
            v = ds[()]
            v.reshape(-1).view(np.uint8)[0] ^= 0xFF
            ds[...] = v


def test_corruption_is_found(complete, kind):
    where, _, local = complete
    with featstore.open_store(where) as store:
        name = next(n for n in sorted(all_files(store.manifest)) if "/L2/tokens" in n and
                    (kind == "hdf5" or "/c/" in n))
    if kind == "remote":
        _corrupt(kind, local, where, name)
    else:
        _corrupt(kind, local, where, name)
    problems = verify(where)
    assert any(name in p and "checksum" in p for p in problems), problems


def test_counts_and_shapes_are_validated(kind, tmp_path):
    if kind == "remote":
        pytest.skip("remote manifests are validated by the same code (test_sharing covers tampered remotes)")
    path, _ = _store(str(tmp_path / ("s.h5" if kind == "hdf5" else "s")), kind)
    b = local_backend(path)
    m = b.read_manifest()
    b.close()
    # a segment that claims one more token than its split: the manifest is refused
    bad = json.loads(json.dumps(m))
    bad["segments"][0]["n_tokens"] += 1
    _replace_manifest(path, kind, bad)
    with pytest.raises(StoreError, match="declares"):
        featstore.open_store(path)
    # an array whose shape disagrees with the manifest: refused before any read
    seg = m["segments"][0]
    bad = json.loads(json.dumps(m))
    bad["segments"][0]["n_tokens"] += 1
    bad["segments"][1]["n_tokens"] -= 1
    bad["dataset"]["splits"][seg["split"]]["n_tokens"] = m["dataset"]["splits"][seg["split"]]["n_tokens"]
    _replace_manifest(path, kind, bad)
    with featstore.open_store(path) as store:
        with pytest.raises(StoreError, match="has shape"):
            store.split(seg["split"]).segment_array(0, "L1/tokens")


def _replace_manifest(path: str, kind: str, m: dict) -> None:
    if kind == "zarr":
        with open(os.path.join(path, "manifest.json"), "w") as f:
            json.dump(m, f)
    else:
        import h5py

        with h5py.File(path, "r+") as f:
            f.attrs["manifest"] = json.dumps(m)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_segment_is_invisible_until_committed(fmt, tmp_path):
    b = local_backend(str(tmp_path / ("s.h5" if fmt == "hdf5" else "s")), fmt)
    b.create()
    pending = b.write_segment("train", "s00000", _segment_arrays(), "none", 1 << 20)
    assert b.committed_segments() == {}
    assert pending.files and all(k.startswith("segments/train/s00000/") for k in pending.files)
    record = b.commit_segment(pending, {"split": "train", "name": "s00000", "n_tokens": 5})
    assert set(b.committed_segments()) == {"train/s00000"}
    assert b.committed_segments()["train/s00000"] == json.loads(json.dumps(record))


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_killed_writer_leaves_nothing_committed(fmt, tmp_path):
    """A writer SIGKILLed after writing a segment and before committing it: nothing reads as committed, the
    debris is recognised and cleaned, and the store never opens as complete."""
    path = str(tmp_path / ("s.h5" if fmt == "hdf5" else "s"))
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from featstore.store import local_backend
        b = local_backend({path!r}, {fmt!r})
        b.create()
        b.write_manifest({{"format_version": 1, "complete": False}})
        ok = b.write_segment("train", "s00000", {{"x": np.arange(10.0)}}, "none", 1 << 20)
        b.commit_segment(ok, {{"split": "train", "name": "s00000"}})
        b.write_segment("train", "s00001", {{"x": np.arange(1 << 16, dtype=np.float64)}}, "none", 1 << 20)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    b = local_backend(path, fmt)
    assert set(b.committed_segments()) == {"train/s00000"}
    seg_dir = os.path.join(path + ".parts" if fmt == "hdf5" else path, "segments", "train")
    debris = [n for n in os.listdir(seg_dir) if ".partial" in n]
    assert debris  # the killed segment's files are there, under a temporary name
    b.discard_partial_segments()
    assert not [n for n in os.listdir(seg_dir) if ".partial" in n]
    assert set(b.committed_segments()) == {"train/s00000"}
    with pytest.raises(StoreError):
        featstore.open_store(path)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_foreign_target_is_refused(fmt, tmp_path):
    target = tmp_path / ("x.h5" if fmt == "hdf5" else "x")
    if fmt == "hdf5":
        target.write_bytes(b"not a store")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    from featstore.errors import InputError

    with pytest.raises(InputError, match="not a featstore store"):
        local_backend(str(target), fmt).check_target()


def test_zarr_store_is_a_browsable_hierarchy(shared_store):
    """Plain zarr sees every array of every segment (group metadata at every level), with dimension names and
    a summary of the manifest on the root group."""
    import warnings

    import zarr

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # zarr warns about directories that are not part of the hierarchy
        root = zarr.open_group(shared_store, mode="r")
        arrays = {name for name, node in root.members(max_depth=None) if isinstance(node, zarr.Array)}
        tree = str(root.tree())
    # only our two JSON records (the manifest, each segment's commit record) are not Zarr nodes
    strangers = [str(w.message) for w in caught if not any(f"{n} is not" in str(w.message) for n in
                                                             ("manifest.json", "segment.json"))]
    assert not strangers, strangers
    with featstore.open_store(shared_store) as store:
        m = store.manifest
        for seg in m["segments"]:
            base = f"segments/{seg['split']}/{seg['name']}"
            for k in store.layers:
                for kind in ("tokens", "cls", "mean"):
                    assert f"{base}/L{k}/{kind}" in arrays
            assert f"{base}/offsets" in arrays
        assert "labels/train/label" in arrays
        assert seg["name"] in tree and "tokens" in tree
        tokens = root[f"segments/{seg['split']}/{seg['name']}/L{store.layers[0]}/tokens"]
        assert tokens.metadata.dimension_names == ("token", "hidden")
        assert root["segments/train"][seg["name"]]["offsets"].metadata.dimension_names == ("example_edge",)
        summary = root.attrs["featstore"]
        assert summary["fingerprint"] == store.fingerprint and summary["layers"] == store.layers
        assert summary["splits"] == {k: v["n_examples"] for k, v in m["dataset"]["splits"].items()}
