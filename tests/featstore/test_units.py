"""Unit tests of the pieces every store path leans on, without a model: manifest validation, the verified
file cache, the planner, the background-thread helpers, and input checks."""
from __future__ import annotations

import hashlib
import json
import threading
import time

import numpy as np
import pytest

from featstore.errors import InputError, StoreError
from featstore.extract.inputs import load_dataset
from featstore.extract.plan import Segment, plan_batches, plan_segments, storage_order
from featstore.io.background import BackgroundWorker, parallel_map, read_ahead
from featstore.io.cache import FileCache
from featstore.io.transport import Remote
from featstore.store.manifest import validate, validate_published

HEX = "a" * 64


def _manifest(**over) -> dict:
    m = {"format_version": 1, "format": "zarr", "fingerprint": HEX, "complete": True,
         "model": {"hidden_size": 4}, "tokenizer": {}, "settings": {"dtype": "float16", "layers": [1]},
         "dataset": {"splits": {"train": {"n_examples": 2, "n_tokens": 5}}, "label_columns": []},
         "segments": [{"split": "train", "name": "s00000", "index": 0, "n_examples": 2, "n_tokens": 5,
                       "files": {"segments/train/s00000/L1/tokens/c/0/0": {"size": 40, "sha256": HEX}}}],
         "files": {}}
    m.update(over)
    return m


# -- manifest validation -----------------------------------------------------------------------------------

def test_a_sound_manifest_passes():
    m = _manifest()
    assert validate(m, "x") is m and validate_published(m, "x") is m


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.pop("fingerprint"), "lacks 'fingerprint'"),
    (lambda m: m.update(format_version=99), "format version 99"),
    (lambda m: m["settings"].update(dtype="int4"), "dtype 'int4' unknown"),
    (lambda m: m["settings"].update(layers=[]), "layers"),
    (lambda m: m["model"].update(hidden_size=-1), "not a sane count"),
    (lambda m: m["dataset"]["splits"].update({"../x": {"n_examples": 0, "n_tokens": 0}}), "not a safe name"),
    (lambda m: m["segments"][0].update(n_tokens=6), "declares 2 examples and 5 tokens"),
    (lambda m: m["segments"][0]["files"].update({"../../etc/passwd": {"size": 1, "sha256": HEX}}), "unsafe"),
    (lambda m: m.update(segments="nonsense"), "malformed"),
])
def test_damaged_manifests_are_refused(damage, message):
    m = _manifest()
    damage(m)
    with pytest.raises(StoreError, match=message):
        validate(m, "x")


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.update(complete=False), "incomplete"),
    (lambda m: m.update(fingerprint="ABC"), "not a sha256"),
    (lambda m: m.update(format="parquet"), "format 'parquet' unknown"),
    (lambda m: m["segments"][0]["files"].update({"segments/train/s00000/L1/tokens/c/0/0/x": {"size": 1, "sha256": HEX}}),
     "both as a file and as a directory"),
    (lambda m: m["files"].update({"manifest.json": {"size": 1, "sha256": HEX}}), "reserved"),
    (lambda m: m["files"].update({"labels/x": {"size": 1, "sha256": "zz"}}), "no valid sha256"),
])
def test_published_manifests_are_held_to_more(damage, message):
    m = _manifest()
    damage(m)
    with pytest.raises(StoreError, match=message):
        validate_published(m, "x")


# -- the verified file cache -------------------------------------------------------------------------------

def _published_file(tmp_path, name: str, data: bytes) -> tuple[Remote, dict]:
    src = tmp_path / "remote"
    src.mkdir(exist_ok=True)
    (src / name).write_bytes(data)
    return Remote(f"file://{src}"), {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_cache_fetches_verifies_and_replaces_a_damaged_copy(tmp_path):
    remote, meta = _published_file(tmp_path, "a.bin", b"x" * 1000)
    cache = FileCache(str(tmp_path / "cache"), max_bytes=1 << 20)
    path = cache.fetch(remote, HEX, "a.bin", meta)
    assert open(path, "rb").read() == b"x" * 1000
    with open(path, "wb") as f:
        f.write(b"y" * 1000)  # a bad disk or a meddler
    fresh = FileCache(str(tmp_path / "cache"), max_bytes=1 << 20)  # another process: checks before use
    assert open(fresh.fetch(remote, HEX, "a.bin", meta), "rb").read() == b"x" * 1000


def test_cache_refuses_a_remote_file_that_differs(tmp_path):
    remote, meta = _published_file(tmp_path, "a.bin", b"x" * 1000)
    (tmp_path / "remote" / "a.bin").write_bytes(b"z" * 1000)
    cache = FileCache(str(tmp_path / "cache"), max_bytes=1 << 20)
    with pytest.raises(StoreError, match="fails its sha256"):
        cache.fetch(remote, HEX, "a.bin", meta)
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))  # nothing unverified kept


def test_cache_evicts_least_recently_used_first(tmp_path):
    cache = FileCache(str(tmp_path / "cache"), max_bytes=2500)
    paths = {}
    for i, name in enumerate(("a", "b", "c")):
        remote, meta = _published_file(tmp_path, name, bytes([i]) * 1000)
        paths[name] = cache.fetch(remote, HEX, name, meta)
        time.sleep(0.02)  # distinct access times
    import os

    assert not os.path.exists(paths["a"]) and os.path.exists(paths["b"]) and os.path.exists(paths["c"])


# -- the planner -------------------------------------------------------------------------------------------

def test_segments_cover_every_row_once_in_storage_order():
    lengths = np.random.default_rng(0).integers(1, 50, 500)
    segs = plan_segments("train", lengths, 700)
    order = np.concatenate([s.examples for s in segs])
    np.testing.assert_array_equal(order, storage_order(lengths))
    assert np.all(np.diff(lengths[order]) <= 0)  # longest first
    assert all(lengths[s.examples].sum() >= 700 for s in segs[:-1])
    assert [s.name for s in segs[:2]] == ["s00000", "s00001"]
    again = plan_segments("train", lengths, 700)  # deterministic: resume and ranks plan the same segments
    assert [s.examples.tolist() for s in again] == [s.examples.tolist() for s in segs]


def test_batches_stay_within_the_token_budget():
    lengths = np.random.default_rng(1).integers(1, 64, 300)
    seg = Segment("train", 0, storage_order(lengths))
    plan_batches(seg, lengths, 256)
    assert np.array_equal(np.concatenate(seg.batches), seg.examples)
    for b in seg.batches:
        padded = -(-int(lengths[b].max()) // 8) * 8
        assert len(b) == 1 or len(b) * padded <= 256


# -- background threads ------------------------------------------------------------------------------------

def test_worker_runs_in_order_and_raises_the_first_error():
    seen = []
    with BackgroundWorker(seen.append, depth=1) as w:
        for i in range(20):
            w.put(i)
    assert seen == list(range(20))

    def fail(i):
        if i == 3:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        with BackgroundWorker(fail) as w:
            for i in range(10):
                w.put(i)
                time.sleep(0.01)


def test_worker_exit_by_exception_drops_pending_items():
    seen, gate = [], threading.Event()

    def slow(i):
        gate.wait(5)
        seen.append(i)

    with pytest.raises(KeyboardInterrupt):
        with BackgroundWorker(slow, depth=4) as w:
            for i in range(4):
                w.put(i)
            gate.set()
            raise KeyboardInterrupt
    assert len(seen) < 4


def test_read_ahead_yields_everything_and_stops_early():
    assert list(read_ahead(iter(range(100)), depth=3)) == list(range(100))
    produced = []

    def gen():
        for i in range(10_000):
            produced.append(i)
            yield i

    it = read_ahead(gen(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the consumer stops: the producer thread stops too
    n = len(produced)
    time.sleep(0.1)
    assert len(produced) == n < 100

    def bad():
        yield 1
        raise OSError("disk")

    with pytest.raises(OSError, match="disk"):
        list(read_ahead(bad(), depth=2))


def test_parallel_map_keeps_the_true_ones_and_raises():
    assert sorted(parallel_map(list(range(10)), lambda i: i % 2 == 0, jobs=3)) == [0, 2, 4, 6, 8]
    with pytest.raises(RuntimeError):
        parallel_map([1, 2, 3], lambda i: (_ for _ in ()).throw(RuntimeError("x")), jobs=2)


# -- empty texts -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, pair", [("", "ok"), ("  \t", "ok"), ("fine", "")])
def test_empty_texts_are_refused_naming_split_row_and_column(tmp_path, text, pair):
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [{"text": "a b", "p": "c"}, {"text": text, "p": pair}]))
    col = "text" if not text.strip() else "p"
    with pytest.raises(InputError, match=f"split 'train' .* row 1: column '{col}' is empty.*--allow-empty-text"):
        load_dataset({"train": str(p)}, "text", "p")
    ds = load_dataset({"train": str(p)}, "text", "p", allow_empty_text=True)
    assert len(ds.splits["train"]) == 2
