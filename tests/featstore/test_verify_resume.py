"""verify catches damage; a run killed with SIGKILL resumes to the same store as an uninterrupted run."""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import featstore
from featstore.extract import ExtractConfig, extract
from featstore.verify import verify
from tests.conftest import make_rows, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=["zarr", "hdf5"])
def fmt(request):
    return request.param


@pytest.fixture
def small_store(tmp_path, bert, splits, fmt):
    out = str(tmp_path / ("s.h5" if fmt == "hdf5" else "s"))
    extract(ExtractConfig(model=bert, data=splits, out=out, label_columns=["label"], layers="1,2", max_length=24,
                          format=fmt, progress=False))
    assert verify(out) == []
    return out


def _flip_byte_in_features(path: str, fmt: str) -> None:
    if fmt == "zarr":
        target = sorted(glob.glob(os.path.join(path, "segments/train/*/L2/tokens/c/**/*"), recursive=True))
        target = [t for t in target if os.path.isfile(t)][0]
        offset = os.path.getsize(target) // 2
    else:
        import h5py

        with h5py.File(path, "r") as f:
            ds = f["segments/train/s00000/L2/tokens"]
            offset = ds.id.get_chunk_info(0).byte_offset + 100 if ds.chunks else ds.id.get_offset() + 100
        target = path
    with open(target, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_verify_catches_flipped_byte(small_store, fmt):
    _flip_byte_in_features(small_store, fmt)
    problems = verify(small_store)
    assert any("checksum mismatch" in p and "L2/tokens" in p for p in problems), problems


def test_verify_catches_deleted_chunk(small_store, fmt):
    if fmt == "hdf5":  # one file: the nearest damage is a dataset unlinked from it
        import h5py

        with h5py.File(small_store, "a") as f:
            del f["segments/validation/s00000/L1/cls"]
    else:
        chunk = [p for p in glob.glob(os.path.join(small_store, "segments/validation/*/L1/cls/c/**/*"),
                                      recursive=True) if os.path.isfile(p)][0]
        os.remove(chunk)
    problems = verify(small_store)
    assert any(p.endswith(": missing") and "L1/cls" in p for p in problems), problems


def _rewrite_zarr_chunk(store: str, pattern: str, dtype, mutate) -> None:
    """Change a chunk's values and record its new checksum: damage only the consistency checks can see."""
    import hashlib
    import json

    chunk = sorted(p for p in glob.glob(os.path.join(store, pattern), recursive=True) if os.path.isfile(p))[0]
    data = np.fromfile(chunk, dtype=dtype)
    mutate(data)
    data.tofile(chunk)
    raw = open(chunk, "rb").read()
    rel = os.path.relpath(chunk, store).replace(os.sep, "/")
    m = json.load(open(os.path.join(store, "manifest.json")))
    for seg in m["segments"]:
        if rel in seg["files"]:
            seg["files"][rel] = {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    json.dump(m, open(os.path.join(store, "manifest.json"), "w"))


def test_verify_catches_inconsistent_offsets_and_non_finite_values(tmp_path, bert, splits):
    out = str(tmp_path / "s")
    extract(ExtractConfig(model=bert, data=splits, out=out, layers="1,2", max_length=24, progress=False))
    _rewrite_zarr_chunk(out, "segments/train/*/L2/tokens/c/**/*", np.float16, lambda a: a.__setitem__(7, np.nan))
    assert any("layer 2 tokens: non-finite values" in p for p in verify(out))
    assert verify(out, check_values=False) == []  # checksums alone cannot see it
    _rewrite_zarr_chunk(out, "segments/validation/*/length/c/**/*", np.int32, lambda a: a.__setitem__(0, a[0] + 1))
    assert any("offsets and lengths disagree" in p for p in verify(out, check_values=False))


def test_verify_cli_exit_code(small_store):
    from click.testing import CliRunner

    from cli.featstore_cli import main

    r = CliRunner().invoke(main, ["verify", small_store, "--quiet"])
    assert r.exit_code == 0 and "OK" in r.output
    if os.path.isdir(small_store):
        os.remove(os.path.join(small_store, "manifest.json"))
    else:
        import h5py

        with h5py.File(small_store, "a") as f:
            del f.attrs["manifest"]
    r = CliRunner().invoke(main, ["verify", small_store, "--quiet"])
    assert r.exit_code == 1 and "not a featstore store" in r.stderr


def _committed(out: str, fmt: str) -> int:
    if fmt == "zarr":
        return len(glob.glob(os.path.join(out, "segments/*/*/segment.json")))
    return len(glob.glob(out + ".parts/segments/*/*.h5"))


def _store_arrays(path: str) -> dict[str, np.ndarray]:
    s = featstore.open_store(path)
    out = {}
    for name in s.splits:
        sp = s.split(name)
        out[f"{name}/rows"] = sp.rows
        out[f"{name}/ids"] = np.array(sp.example_ids)
        out[f"{name}/label"] = sp.targets("label")
        for k in s.layers:
            out[f"{name}/{k}/tokens"] = sp.tokens(k, 0, sp.n_tokens)
            out[f"{name}/{k}/mean"] = sp.pooled("mean", k)
    out["fingerprint"] = np.array(s.fingerprint)
    s.close()
    return out


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, bert, fmt, kill_at):
    data = {"train": write_jsonl(tmp_path / "train.jsonl", make_rows(48, 7, max_words=40)),
            "test": write_jsonl(tmp_path / "test.jsonl", make_rows(16, 8, max_words=40))}
    out = str(tmp_path / ("killed.h5" if fmt == "hdf5" else "killed"))
    cmd = [sys.executable, "-m", "cli.featstore_cli", "extract", "--model", bert, "--label-column", "label",
           "--layers", "all", "--max-length", "32", "--format", fmt, "--segment-mb", "0.02", "--batch-tokens", "256",
           "--quiet", "--out", out]
    for k, v in data.items():
        cmd += ["--data", f"{k}={v}"]
    kill_at(cmd, "segment-committed:3")  # killed right after its third segment was committed
    with pytest.raises(featstore.StoreError, match="incomplete"):
        featstore.open_store(out)
    assert _committed(out, fmt) == 3

    from click.testing import CliRunner

    from cli.featstore_cli import main

    r = CliRunner().invoke(main, cmd[3:])  # the same command again, resumed (in this process: no start-up cost)
    assert r.exit_code == 0, r.output
    assert re.search(r"\d+ segments, 3 resumed;", r.stdout), r.stdout
    assert verify(out) == []

    ref = str(tmp_path / ("ref.h5" if fmt == "hdf5" else "ref"))
    extract(ExtractConfig(model=bert, data=data, out=ref, label_columns=["label"], layers="all", max_length=32,
                          format=fmt, segment_mb=0.02, batch_tokens=256, progress=False))
    a, b = _store_arrays(out), _store_arrays(ref)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


DRIVER = """
import json, os, sys
from featstore.extract import ExtractConfig, extract
s = extract(ExtractConfig(**json.loads(sys.argv[1])))
with open(os.path.join(sys.argv[2], f"rank{s.rank}.json"), "w") as f:
    json.dump({"rank": s.rank, "tokens": s.tokens, "bytes": s.bytes_written, "segments": s.segments_total}, f)
"""


def test_torchrun_two_ranks_equals_one_process(tmp_path, bert):
    """`torchrun --nproc_per_node 2`: each rank writes its share of segments, rank 0 commits the manifest; the
    result holds the same splits, arrays and values as one process's."""
    data = {"train": write_jsonl(tmp_path / "train.jsonl", make_rows(60, 11)),
            "test": write_jsonl(tmp_path / "test.jsonl", make_rows(20, 12))}
    dist, single = str(tmp_path / "dist"), str(tmp_path / "single")
    cfg = dict(model=bert, data=data, label_columns=["label"], layers="1,2", max_length=24, segment_mb=0.004,
               progress=False)
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "ranks").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(tmp_path / "driver.py"), json.dumps({**cfg, "out": dist}), str(tmp_path / "ranks")],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    args = ["extract", "--model", bert, "--label-column", "label", "--layers", "1,2", "--max-length", "24",
            "--segment-mb", "0.004", "--quiet", "--json", "--out", single]
    for k, v in data.items():
        args += ["--data", f"{k}={v}"]
    r = subprocess.run([sys.executable, "-m", "cli.featstore_cli", *args], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    one = json.loads(r.stdout)
    ranks = [json.load(open(tmp_path / "ranks" / f"rank{k}.json")) for k in (0, 1)]
    assert one["segments_total"] == ranks[0]["segments"] == ranks[1]["segments"] > 2
    # every rank reports the run's totals, which equal one process's: each segment written once
    assert all(x["tokens"] == one["tokens"] and x["bytes"] > 0 for x in ranks), ranks
    writers = {json.load(open(p))["rank"] for p in glob.glob(os.path.join(dist, "segments", "*", "*", "segment.json"))}
    assert writers == {0, 1}  # every rank wrote segments (each segment's local record names its writer)
    assert verify(dist) == []
    a, b = _store_arrays(dist), _store_arrays(single)
    assert featstore.open_store(dist).splits == featstore.open_store(single).splits == ["train", "test"]
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
