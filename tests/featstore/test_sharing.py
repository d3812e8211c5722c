"""Sharing stores: push, ls, pull, verify and read in place, against a real S3 server and a local directory URL.

Every test runs twice (`remote` fixture): on moto's S3 server over loopback and on a plain `file://` directory.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys

from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import featstore
from cli.featstore_cli import main
from featstore.errors import InputError, StoreError
from featstore.store.manifest import all_files
from featstore.share import ls, pull, push
from featstore.verify import verify

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def arrays(store) -> dict[str, np.ndarray]:
    """Everything a head can read from a store."""
    out = {"fingerprint": np.array(store.fingerprint)}
    for name in store.splits:
        sp = store.split(name)
        out[f"{name}/rows"], out[f"{name}/ids"] = sp.rows, np.array(sp.example_ids)
        out[f"{name}/offsets"], out[f"{name}/label"] = sp.offsets, sp.targets("label")
        out[f"{name}/input_ids"] = np.concatenate([sp.input_ids(i) for i in range(len(sp))])
        for k in store.layers:
            out[f"{name}/L{k}/tokens"] = sp.tokens(k, 0, sp.n_tokens)
            out[f"{name}/L{k}/cls"], out[f"{name}/L{k}/mean"] = sp.pooled("cls", k), sp.pooled("mean", k)
    for k in store.layers:
        out[f"label_features/L{k}"] = store.label_features("label", k)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def local_arrays(shared_store):
    with featstore.open_store(shared_store) as s:
        return arrays(s)


def flip_byte(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


def a_chunk(store_path: str, split: str = "train", what: str = "L2/tokens") -> str:
    """Manifest path of one chunk of a feature array."""
    with featstore.open_store(store_path) as s:
        files = all_files(s.manifest)
    return sorted(f for f in files if f.startswith(f"segments/{split}/") and f"/{what}/c/" in f)[0]


# -- publish, list, fetch, verify ------------------------------------------------------------------------

def test_push_ls_pull_verify_round_trip(remote, shared_store, tmp_path, local_arrays):
    url = remote.url("glue", "sst2")
    r = push(shared_store, url, progress=False)
    n_files = len(all_files(featstore.open_store(shared_store).manifest))
    assert (r.files, r.transferred, r.resumed, r.already) == (n_files, n_files, 0, False)
    assert remote.read(url + "/manifest.json") == open(os.path.join(shared_store, "manifest.json"), "rb").read()

    again = push(shared_store, url, progress=False)
    assert again.already and again.transferred == 0

    entries, problems = ls(remote.url())
    assert problems == [] and [e["name"] for e in entries] == ["glue/sst2"]
    e = entries[0]
    with featstore.open_store(shared_store) as s:
        assert e["fingerprint"] == s.fingerprint and e["layers"] == [1, 2] and e["format"] == "zarr"
        assert e["splits"] == {"train": 40, "validation": 12, "test": 12}
        assert e["bytes"] == sum(f["size"] for f in all_files(s.manifest).values()) and e["created"]

    dest = str(tmp_path / "copy" / "sst2")
    got = pull(url, dest, progress=False)
    assert got.transferred == n_files and not got.already
    assert verify(dest) == []
    assert open(os.path.join(dest, "manifest.json"), "rb").read() == \
        open(os.path.join(shared_store, "manifest.json"), "rb").read()
    with featstore.open_store(dest) as s:
        assert_same(arrays(s), local_arrays)
    assert os.listdir(tmp_path / "copy") == ["sst2"]  # no temporary left behind
    assert pull(url, dest, progress=False).already

    assert verify(url) == []  # in place

    # ls reads manifests alone: with every data file gone, it lists exactly the same
    remote.remove(*(f"{url}/{rel}" for rel in remote.files(url) if rel != "manifest.json"))
    assert remote.files(url) == ["manifest.json"]
    assert ls(remote.url()) == (entries, [])


def test_cli_push_ls_pull_verify(remote, shared_store, tmp_path, request):
    url = remote.url("team", "sst2")
    opts = ["--storage-option", f"client_kwargs.endpoint_url={request.getfixturevalue('s3_env')}"] \
        if remote.kind == "s3" else []
    run = CliRunner().invoke
    r = run(main, ["push", shared_store, url, "--quiet", *opts])
    assert r.exit_code == 0 and "published" in r.output, r.output
    r = run(main, ["push", shared_store, url, "--quiet", *opts])
    assert r.exit_code == 0 and "already published" in r.output, r.output
    r = run(main, ["ls", remote.url(), *opts])
    assert r.exit_code == 0 and "team/sst2" in r.output and "train:40" in r.output and "FINGERPRINT" in r.output
    r = run(main, ["ls", remote.url(), "--json", *opts])
    assert r.exit_code == 0 and json.loads(r.output)[0]["name"] == "team/sst2"
    r = run(main, ["info", url, *opts])
    assert r.exit_code == 0 and "complete" in r.output and "40 examples" in r.output
    r = run(main, ["verify", url, "--quiet", "--cache-dir", str(tmp_path / "c"), *opts])
    assert r.exit_code == 0 and "OK" in r.output, r.output
    r = run(main, ["pull", url, str(tmp_path / "copy"), "--quiet", "--json", *opts])
    assert r.exit_code == 0 and json.loads(r.output)["transferred"] > 0
    r = run(main, ["pull", remote.url("nothing-here"), str(tmp_path / "x"), "--quiet", *opts])
    assert r.exit_code == 2 and r.stderr.startswith("error: no store at") and "\n" not in r.stderr.strip()
    r = run(main, ["push", shared_store, url, "--storage-option", "novalue"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.stderr


def test_read_in_place_equals_local_copy_and_is_cached(remote, shared_store, tmp_path, local_arrays):
    url = remote.url("sst2")
    push(shared_store, url, progress=False)
    cache = str(tmp_path / "cache")
    with featstore.open_store(url, cache_dir=cache) as s:
        assert s.is_remote and s.path == url
        assert_same(arrays(s), local_arrays)
    # a second run reads locally: even with the remote data gone, the cache serves every array
    remote.remove(*(f"{url}/{rel}" for rel in remote.files(url) if rel != "manifest.json"))
    assert remote.files(url) == ["manifest.json"]
    with featstore.open_store(url, cache_dir=cache) as s:
        assert_same(arrays(s), local_arrays)


def test_prefetch_and_bounded_cache(remote, shared_store, tmp_path, local_arrays):
    from featstore.io.cache import FileCache

    url = remote.url("sst2")
    push(shared_store, url, progress=False)
    bound = 64 << 10  # far smaller than the store: files are evicted and fetched again as needed
    with featstore.open_store(url, cache_dir=str(tmp_path / "c"), cache_max_bytes=bound) as s:
        assert s.prefetch(["validation"]) > 0
        assert_same(arrays(s), local_arrays)
    largest = max(f["size"] for f in all_files(featstore.open_store(shared_store).manifest).values())
    assert FileCache(str(tmp_path / "c"), bound).usage() <= bound + largest


def test_damaged_local_store_is_never_published(shared_store, tmp_path):
    store = str(tmp_path / "damaged")
    shutil.copytree(shared_store, store)
    rel = a_chunk(store, "validation")
    path = os.path.join(store, *rel.split("/"))
    with open(path, "rb") as f:
        good = f.read()
    with open(path, "wb") as f:
        f.write(flip_byte(good))  # same size: only its checksum tells
    url = "file://" + str(tmp_path / "published" / "sst2")
    with pytest.raises(StoreError, match=re.escape(f"local store {store}: {rel} does not match its checksum") +
                       ".*was not published"):
        push(store, url, jobs=1, progress=False)
    published = tmp_path / "published" / "sst2"
    assert not (published / "manifest.json").exists() and not (published / rel).exists()
    with pytest.raises(StoreError, match="unfinished upload"):
        featstore.open_store(url)


def _cache_files(tmp_path, n: int = 4) -> tuple[Any, dict[str, dict]]:
    """A file:// remote holding n files of 1000 bytes, and their manifest entries."""
    import hashlib

    from featstore.io.transport import Remote

    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for name in "abcdefgh"[:n]:
        data = name.encode() * 1000
        (src / name).write_bytes(data)
        files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return Remote("file://" + str(src)), files


def test_cache_bound_evicts_least_recently_used_first(tmp_path, monkeypatch):
    """FEATSTORE_CACHE_MAX_GB bounds the cache; over it, the files used longest ago go first."""
    import time

    from featstore.io.cache import FileCache

    remote, files = _cache_files(tmp_path)
    fp, root = "f" * 64, str(tmp_path / "cache")
    monkeypatch.setenv("FEATSTORE_CACHE_MAX_GB", str(2500 / 2 ** 30))  # room for two files and a half

    def use(*names: str) -> None:  # one process (one reader) using files in this order
        cache = FileCache(root)
        for name in names:
            with open(cache.fetch(remote, fp, name, files[name]), "rb") as f:
                assert f.read() == name.encode() * 1000
            time.sleep(0.02)  # distinct use times

    def cached() -> set[str]:
        return {n for n, meta in files.items() if os.path.isfile(FileCache(root).path(fp, meta["sha256"]))}

    use("a", "b")
    use("a", "c")  # a is used again, so b is now the least recently used: c evicts b, not a
    assert cached() == {"a", "c"}
    use("d")
    assert cached() == {"c", "d"}
    assert FileCache(root).usage() <= 2500


def test_cache_eviction_counts_uses_within_one_process(tmp_path):
    import time

    from featstore.io.cache import FileCache

    remote, files = _cache_files(tmp_path)
    fp, cache = "f" * 64, FileCache(str(tmp_path / "cache"), max_bytes=2500)
    for name in ("a", "b", "a", "c"):  # a is used again before c arrives: b is the least recently used
        cache.fetch(remote, fp, name, files[name])
        time.sleep(0.02)
    assert {n for n, meta in files.items() if os.path.isfile(cache.path(fp, meta["sha256"]))} == {"a", "c"}


def test_push_refuses_a_different_store(remote, shared_store, tmp_path):
    from featstore.labels import add_labels

    url = remote.url("sst2")
    push(shared_store, url, progress=False)
    other = str(tmp_path / "other")
    shutil.copytree(shared_store, other)
    m = json.load(open(os.path.join(other, "manifest.json")))
    m["fingerprint"] = "0" * 64
    m["settings"]["max_length"] = 16
    json.dump(m, open(os.path.join(other, "manifest.json"), "w"))
    with pytest.raises(StoreError, match=r"already holds a different store \(max_length \(24 vs 16\)"):
        push(other, url, progress=False)
    # same features, new labels: still a different published artefact, so refused as well
    relabelled = str(tmp_path / "relabelled")
    shutil.copytree(shared_store, relabelled)
    ids = {}
    with featstore.open_store(relabelled) as s:
        for name in s.splits:
            ids[name] = s.split(name).example_ids
    data = {}
    for name, split_ids in ids.items():
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"id": i, "flag": str(len(i) % 2)}) + "\n" for i in split_ids))
        data[name] = str(p)
    add_labels(relabelled, data, "flag")
    with pytest.raises(StoreError, match="other files or label columns.*push under a new name"):
        push(relabelled, url, progress=False)
    assert remote.read(url + "/manifest.json") == open(os.path.join(shared_store, "manifest.json"), "rb").read()
    assert push(relabelled, remote.url("sst2-flag"), progress=False).transferred > 0


def test_push_refuses_a_non_store_location(remote, shared_store):
    remote.write(remote.url("data", "notes.txt"), b"someone else's files")
    with pytest.raises(StoreError, match="not empty and holds no featstore store"):
        push(shared_store, remote.url("data"), progress=False)
    with pytest.raises(InputError, match="push takes a local store"):
        push(remote.url("data"), remote.url("x"), progress=False)


# -- damage ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["flip", "append"])
def test_corrupted_object_detected_on_pull_verify_and_read(remote, shared_store, tmp_path, damage):
    url = remote.url("sst2")
    push(shared_store, url, progress=False)
    rel = a_chunk(shared_store)
    good = remote.read(f"{url}/{rel}")
    remote.write(f"{url}/{rel}", flip_byte(good) if damage == "flip" else good + b"\0" * 4096)

    dest = tmp_path / "copy"
    with pytest.raises(StoreError, match=f"file {rel} (fails its sha256 checksum|has more than)") as e:
        pull(url, str(dest), progress=False)
    assert "nothing was installed" in str(e.value)
    assert not dest.exists()  # only the hidden work directory (kept for resume) is left next to it
    assert set(os.listdir(tmp_path)) <= {".copy.featstore-pull", "published", "user-cache"}

    problems = verify(url, cache_dir=str(tmp_path / "vc"))
    assert len(problems) == 1 and problems[0].startswith(rel), problems

    with featstore.open_store(url, cache_dir=str(tmp_path / "rc")) as s:
        sp = s.split("train")
        with pytest.raises(StoreError, match=f"file {rel}"):
            sp.tokens(2, 0, sp.n_tokens)
    # repaired at the source: the same pull resumes and succeeds
    remote.write(f"{url}/{rel}", good)
    r = pull(url, str(dest), progress=False)
    assert r.resumed > 0 and verify(str(dest)) == []


def test_corrupted_cache_file_is_fetched_again(remote, shared_store, tmp_path, local_arrays):
    url = remote.url("sst2")
    push(shared_store, url, progress=False)
    cache = tmp_path / "cache"
    with featstore.open_store(url, cache_dir=str(cache)) as s:
        arrays(s)
        fp = s.fingerprint
        meta = all_files(s.manifest)[a_chunk(shared_store)]
    cached = cache / fp / meta["sha256"][:2] / meta["sha256"]
    cached.write_bytes(flip_byte(cached.read_bytes()))
    with featstore.open_store(url, cache_dir=str(cache)) as s:
        assert_same(arrays(s), local_arrays)
    from featstore.io.files import sha256_file

    assert sha256_file(str(cached)) == meta["sha256"]


def test_s3_environment_is_set_per_test_only(s3_server, remote):
    """The AWS variables that point clients at moto are set for the tests that use S3 and removed after them,
    so no other test (or subprocess) silently talks to the test server."""
    is_set = os.environ.get("AWS_ENDPOINT_URL") == s3_server["AWS_ENDPOINT_URL"]
    assert is_set == (remote.kind == "s3")


# -- interruption ----------------------------------------------------------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.featstore_cli", *args]


def test_killed_push_leaves_no_readable_store_and_resumes(remote, shared_store, tmp_path, local_arrays, kill_at):
    url = remote.url("sst2")
    kill_at(_cli("push", shared_store, url, "--jobs", "1", "--quiet"), "file-transferred:12")
    present = [f for f in remote.files(url) if not f.startswith(".") and ".part-" not in f]
    assert "manifest.json" not in present and len(present) == 12

    with pytest.raises(StoreError, match="unfinished upload"):
        featstore.open_store(url)
    with pytest.raises(StoreError, match="unfinished upload"):
        pull(url, str(tmp_path / "copy"), progress=False)
    entries, _ = ls(remote.url())
    assert [(e["name"], e["status"]) for e in entries] == [("sst2", "unfinished")]
    with featstore.open_store(shared_store) as s:
        m = s.manifest
        m["fingerprint"] = "f" * 64
    other = str(tmp_path / "other")
    shutil.copytree(shared_store, other)
    json.dump(m, open(os.path.join(other, "manifest.json"), "w"))
    with pytest.raises(StoreError, match="unfinished upload of a different store"):
        push(other, url, progress=False)

    # a file already there under its name and size but with other bytes is sent again, not kept
    victim = max(present, key=lambda rel: len(remote.read(f"{url}/{rel}")))
    good = remote.read(f"{url}/{victim}")
    remote.write(f"{url}/{victim}", flip_byte(good))
    r = push(shared_store, url, progress=False)
    assert (r.resumed, r.transferred) == (11, r.files - 11)
    assert remote.read(f"{url}/{victim}") == good
    assert not any(".part-" in f or f.startswith(".") for f in remote.files(url))
    with featstore.open_store(url, cache_dir=str(tmp_path / "c")) as s:
        assert_same(arrays(s), local_arrays)


def test_killed_pull_resumes(remote, shared_store, tmp_path, local_arrays, kill_at):
    url = remote.url("sst2")
    push(shared_store, url, progress=False)
    dest = tmp_path / "copy"
    work = tmp_path / ".copy.featstore-pull"
    kill_at(_cli("pull", url, str(dest), "--jobs", "1", "--quiet"), "file-transferred:12")
    assert not dest.exists()
    assert sum(len(f) for _, _, f in os.walk(work)) == 12 + 1  # and the work directory's stamp
    r = pull(url, str(dest), progress=False)
    assert (r.resumed, r.transferred) == (12, r.files - 12)
    assert not work.exists() and verify(str(dest)) == []
    with featstore.open_store(str(dest)) as s:
        assert_same(arrays(s), local_arrays)


# -- untrusted manifests ---------------------------------------------------------------------------------

def _tampered(shared_store: str, how: str, outside: str) -> tuple[dict | None, str | None, str]:
    """(manifest, the path it smuggles in, the error expected); `outside` is an absolute path outside the pull."""
    m = json.load(open(os.path.join(shared_store, "manifest.json")))
    seg = m["segments"][0]
    rel = sorted(seg["files"])[0]
    meta = seg["files"].pop(rel)
    bad = {"traversal": "../../escaped/x", "absolute": outside, "scheme": "s3://other-bucket/x",
           "manifest-name": "manifest.json"}.get(how)
    if bad is not None:
        seg["files"][bad] = meta
        expect = f"path {bad!r} is reserved" if how == "manifest-name" else f"file path {bad!r} is unsafe"
        return m, bad, re.escape(expect)
    if how == "absurd-size":
        seg["files"][rel] = {**meta, "size": 10 ** 18}
        return m, None, re.escape(f"size of {rel} = {10 ** 18} is not a sane count")
    if how == "smaller-size":
        seg["files"][rel] = {**meta, "size": 3}  # the object is bigger: never read past 3 (+1) bytes
        return m, None, re.escape(f"file {rel} has more than 3 bytes")
    if how == "bad-fingerprint":
        seg["files"][rel] = meta
        m["fingerprint"] = "../../x"
        return m, None, "fingerprint '../../x' is not a sha256 hex digest"
    return None, None, "manifest is not valid JSON"  # not-json


@pytest.mark.parametrize("how", ["traversal", "absolute", "scheme", "absurd-size", "smaller-size",
                                 "bad-fingerprint", "manifest-name", "not-json"])
def test_malicious_manifest_is_rejected(remote, shared_store, tmp_path, how):
    url = remote.url("evil")
    push(shared_store, url, progress=False)
    dest = tmp_path / "inbox" / "deep" / "copy"  # pull works in tmp_path/inbox/deep/.copy.featstore-pull
    outside = str(tmp_path / "abs-escaped" / "x")
    m, bad, expect = _tampered(shared_store, how, outside)
    remote.write(url + "/manifest.json", b"{not json" if m is None else json.dumps(m).encode())
    # where a smuggled path would land if it were followed: relative to the pull's work directory, or as is
    landing = {"traversal": tmp_path / "inbox" / "escaped" / "x", "absolute": tmp_path / "abs-escaped" / "x"}.get(how)
    if landing is not None:
        # the object is really there under that name: only the path checks stand between it and `landing`
        fs, root = remote.fs(url)
        planted = f"{root}/{bad}"
        if remote.kind == "local":
            planted = os.path.normpath(planted)
            os.makedirs(os.path.dirname(planted), exist_ok=True)
        fs.pipe_file(planted, _planted(shared_store, m, bad))
        assert fs.cat_file(f"{root}/{bad}") == _planted(shared_store, m, bad)
    with pytest.raises(StoreError, match=expect) as e:
        pull(url, str(dest), progress=False)
    assert "\n" not in str(e.value)
    assert not dest.exists() and (landing is None or not landing.exists())
    if how != "smaller-size":  # caught from the manifest alone
        with pytest.raises(StoreError, match=expect):
            featstore.open_store(url, cache_dir=str(tmp_path / "c"))
        entries, problems = ls(remote.url())
        assert entries == [] and len(problems) == 1 and re.search(expect, problems[0])


def _planted(shared_store: str, m: dict, bad: str) -> bytes:
    """The bytes the tampered manifest declares for `bad` (those of the real file it was renamed from)."""
    meta = m["segments"][0]["files"][bad]
    for seg in json.load(open(os.path.join(shared_store, "manifest.json")))["segments"]:
        for rel, real in seg["files"].items():
            if real == meta:
                return open(os.path.join(shared_store, *rel.split("/")), "rb").read()
    raise AssertionError("no file with that checksum")


@pytest.mark.parametrize("how", ["array-shape", "count"])
def test_shapes_and_counts_are_checked_on_read(remote, shared_store, tmp_path, how):
    """A tampered array header (absurd shape, checksums fixed up) or an inflated count is refused on read,
    before any allocation: the manifest's counts bound what is read."""
    import hashlib

    url = remote.url("tampered", how)
    push(shared_store, url, progress=False)
    m = json.load(open(os.path.join(shared_store, "manifest.json")))
    seg = next(s for s in m["segments"] if s["split"] == "train")
    if how == "array-shape":
        rel = f"segments/train/{seg['name']}/length/zarr.json"
        meta = json.load(open(os.path.join(shared_store, rel)))
        meta["shape"] = [10 ** 13]
        raw = json.dumps(meta).encode()
        remote.write(f"{url}/{rel}", raw)
        seg["files"][rel] = {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        match = "has shape"
    else:
        seg["n_examples"] += 5
        m["dataset"]["splits"]["train"]["n_examples"] += 5
        match = "has shape"
    remote.write(url + "/manifest.json", json.dumps(m).encode())
    with featstore.open_store(url, cache_dir=str(tmp_path / "c")) as s:
        with pytest.raises(StoreError, match=match):
            s.split("train").lengths
    problems = verify(url, cache_dir=str(tmp_path / "c2"))
    assert problems and all("\n" not in p for p in problems)


def test_oversized_manifest_is_refused(remote, shared_store, tmp_path, monkeypatch):
    import featstore.io.transport

    url = remote.url("big")
    push(shared_store, url, progress=False)
    monkeypatch.setattr(featstore.io.transport, "MAX_MANIFEST_BYTES", 1024)
    with pytest.raises(StoreError, match="larger than 1024 bytes"):
        pull(url, str(tmp_path / "copy"), progress=False)
    with pytest.raises(StoreError, match="larger than 1024 bytes"):  # read in place
        featstore.open_store(url, cache_dir=str(tmp_path / "c"))
    problems = verify(url, cache_dir=str(tmp_path / "c"))
    assert len(problems) == 1 and "larger than 1024 bytes" in problems[0]
    entries, problems = ls(remote.url())
    assert entries == [] and len(problems) == 1 and "larger than 1024 bytes" in problems[0]


# -- HDF5 ------------------------------------------------------------------------------------------------

def test_hdf5_push_pull_and_read_in_place(remote, shared_h5, tmp_path):
    url = remote.url("sst2-h5")
    r = push(shared_h5, url, progress=False)
    assert r.files == 1
    entries, _ = ls(remote.url())
    assert entries[0]["format"] == "hdf5" and entries[0]["bytes"] == os.path.getsize(shared_h5)
    dest = str(tmp_path / "copy.h5")
    pull(url, dest, progress=False)
    assert open(dest, "rb").read() == open(shared_h5, "rb").read() and verify(dest) == []
    assert verify(url, cache_dir=str(tmp_path / "c")) == []
    with featstore.open_store(url, cache_dir=str(tmp_path / "c")) as a, featstore.open_store(shared_h5) as b:
        assert_same(arrays(a), arrays(b))


def test_heads_train_on_url_equals_local_copy(remote, shared_store, tmp_path):
    """`heads train` reads a URL through `featstore.open_store`: same data, same metrics as the local copy."""
    heads = pytest.importorskip("heads")
    url = remote.url("sst2")
    push(shared_store, url, progress=False)
    cfg = dict(label_column="label", epochs=2, d_head=16, n_layers=1, n_heads=2, device="cpu", threads=1,
               seeds=[0], progress=False)
    local = heads.train(heads.TrainConfig("ytuning", store=shared_store, out=str(tmp_path / "local"), **cfg))
    remote_run = heads.train(heads.TrainConfig("ytuning", store=url, out=str(tmp_path / "remote"), **cfg))
    assert remote_run.summary == local.summary
    assert json.load(open(tmp_path / "remote" / "head.json"))["store"]["fingerprint"] == \
        json.load(open(tmp_path / "local" / "head.json"))["store"]["fingerprint"]


@pytest.mark.parametrize("cmd,expect", [
    (["push"], ["--storage-option", "--jobs", "immutable"]),
    (["pull"], ["--storage-option", "--jobs", "resume"]),
    (["ls"], ["--json", "--depth"]),
    (["verify"], ["--storage-option", "--cache-dir"]),
    (["info"], ["--storage-option"]),
    (["add-labels"], ["--data", "--id-column", "--label-column"]),
])
def test_help(cmd, expect):
    r = CliRunner().invoke(main, cmd + ["--help"])
    assert r.exit_code == 0, r.output
    for e in expect:
        assert e in r.output
