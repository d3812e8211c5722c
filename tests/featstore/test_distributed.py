"""Extraction under torchrun (gloo on CPU): the same store as one process, balanced shares, failures that end
the run at once, and resume across any number of ranks. Real torchrun subprocesses, real stores."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import featstore
from featstore.extract import ExtractConfig, extract
from featstore.extract.plan import assign_shares
from featstore.store import local_backend, writable_backend
from featstore.verify import verify
from tests.conftest import make_rows, write_jsonl
from tests.featstore.conftest import BUCKET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "featstore")
ARGS = ["--label-column", "label", "--layers", "1,2", "--max-length", "24", "--segment-mb", "0.004", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"train": write_jsonl(d / "train.jsonl", make_rows(48, 21)),
            "test": write_jsonl(d / "test.jsonl", make_rows(16, 22))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, bert):
    """The one-process store everything here must equal, example by example."""
    out = str(tmp_path_factory.mktemp("ref") / "ref")
    extract(ExtractConfig(model=bert, data=data, out=out, label_columns=["label"], layers="1,2", max_length=24,
                          segment_mb=0.004, progress=False))
    return _by_id(out)


def _cmd(bert, data, out, ranks: int | None, no_python: bool = False) -> list[str]:
    """`python -m featstore`, or torchrun launching `-m featstore` (or the console script, `--no-python`)."""
    program = [CONSOLE_SCRIPT] if no_python else ["-m", "featstore"]
    launcher = [sys.executable, "-m", "featstore"] if ranks is None else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
        *(["--no-python"] if no_python else []), *program]
    args = launcher + ["extract", "--model", bert, *ARGS, "--out", out]
    for k, v in data.items():
        args += ["--data", f"{k}={v}"]
    return args


def _run(cmd: list[str], fail: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("FEATSTORE_TEST_FAIL", None)
    if fail:
        env["FEATSTORE_TEST_FAIL"] = fail
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _by_id(path: str, **kw) -> dict[str, np.ndarray]:
    """example id -> every stored feature of it (token features of each layer, pooled vectors, input ids)."""
    store = featstore.open_store(path, **kw)
    out: dict[str, np.ndarray] = {}
    for name in store.splits:
        split = store.split(name)
        ids = split.example_ids
        pooled = {(kind, k): split.pooled(kind, k) for kind in ("cls", "mean") for k in (1, 2)}
        for i, ex in enumerate(ids):
            parts = [split.example(i, [1, 2]).ravel(), split.input_ids(i).astype(np.float32)]
            parts += [p[i].ravel() for p in pooled.values()]
            out[f"{name}/{ex}"] = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
    return out


def _assert_same(path: str, reference: dict[str, np.ndarray], **kw) -> None:
    assert verify(path, **kw) == []
    got = _by_id(path, **kw)
    assert got.keys() == reference.keys()
    for k in reference:
        np.testing.assert_array_equal(got[k], reference[k], err_msg=k)


def _writers(path: str, **kw) -> dict[int, int]:
    """rank -> tokens it wrote, from the segment records (local, or at the URL)."""
    tokens: dict[int, int] = {}
    for r in writable_backend(path, "zarr", kw.get("storage_options")).committed_segments().values():
        tokens[r["rank"]] = tokens.get(r["rank"], 0) + r["n_tokens"]
    return tokens


def test_assign_shares_balances_tokens_deterministically():
    costs = [100, 100, 100, 100, 100, 100, 40]  # by index, rank 0 would take 340 and rank 1 300
    owners = assign_shares(costs, 2)
    assert owners == assign_shares(list(costs), 2)
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(2)]
    assert sorted(loads) == [300, 340]  # LPT: best possible here
    owners = assign_shares([100, 100, 60, 60, 40, 40], 2)
    loads = [sum(c for c, o in zip([100, 100, 60, 60, 40, 40], owners) if o == r) for r in range(2)]
    assert loads == [200, 200]
    assert assign_shares([], 3) == [] and set(assign_shares([5, 5, 5], 3)) == {0, 1, 2}


def test_torchrun_two_ranks_equals_one_process(tmp_path, bert, data, reference):
    out = str(tmp_path / "dist")
    r = _run(_cmd(bert, data, out, 2))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1, r.stdout  # rank 0 reports
    _assert_same(out, reference)
    tokens = _writers(out)
    assert set(tokens) == {0, 1}, tokens  # every rank wrote segments
    assert max(tokens.values()) - min(tokens.values()) <= max(r["n_tokens"] for r in
                                                              local_backend(out, "zarr").committed_segments().values())


def test_rank_killed_then_resumed_in_one_process(tmp_path, bert, data, reference):
    out = str(tmp_path / "s")
    t0 = time.monotonic()
    r = _run(_cmd(bert, data, out, 2), fail="1:2:kill")
    assert r.returncode != 0 and time.monotonic() - t0 < 120, r.stderr[-3000:]
    with pytest.raises(featstore.StoreError, match="incomplete"):
        featstore.open_store(out)
    committed = len(local_backend(out, "zarr").committed_segments())
    assert committed >= 2
    r = _run(_cmd(bert, data, out, None))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{committed} resumed" in r.stdout, r.stdout
    _assert_same(out, reference)


def test_one_process_interrupted_then_resumed_with_two_ranks(tmp_path, bert, data, reference):
    out = str(tmp_path / "s")
    r = _run(_cmd(bert, data, out, None), fail="0:3:kill")
    assert r.returncode != 0
    assert len(local_backend(out, "zarr").committed_segments()) == 3
    if not os.path.isfile(CONSOLE_SCRIPT):
        pytest.skip("the featstore console script is not installed beside this python")
    r = _run(_cmd(bert, data, out, 2, no_python=True))  # torchrun --no-python featstore extract ...
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 resumed" in r.stdout, r.stdout
    _assert_same(out, reference)
    assert set(_writers(out)) == {0, 1}  # the remaining segments were shared


def test_rank_error_ends_run_with_one_line_no_hang(tmp_path, bert, data, reference):
    out = str(tmp_path / "s")
    t0 = time.monotonic()
    r = _run(_cmd(bert, data, out, 2), fail="1:1:raise", timeout=180)
    took = time.monotonic() - t0
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert lines == ["error: rank 1 of 2: RuntimeError: FEATSTORE_TEST_FAIL after 1 committed segments; committed "
                     "segments are kept, re-run (with any number of ranks) to resume"], r.stderr[-3000:]
    assert took < 120, took
    r = _run(_cmd(bert, data, out, 2))  # and the store resumes
    assert r.returncode == 0, r.stderr[-3000:]
    assert " resumed" in r.stdout, r.stdout
    _assert_same(out, reference)


def test_torchrun_two_ranks_straight_to_s3(bert, data, reference, s3_env):
    """--out s3://...: each rank uploads its own committed segments, the manifest last; a plain reader sees a
    published store equal to the one-process local one."""
    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/store"
    opts = {"client_kwargs": {"endpoint_url": s3_env}}
    r = _run(_cmd(bert, data, url, 2) + ["--storage-option", f"client_kwargs.endpoint_url={s3_env}"])
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same(url, reference, storage_options=opts)
    assert set(_writers(url, storage_options=opts)) == {0, 1}


def test_url_out_killed_then_resumed_checks_checksums(tmp_path, bert, data, reference):
    """A killed extraction to a URL is refused by readers, then resumes: committed segments whose files are
    intact are kept, a damaged one (same size, other bytes) is redone."""
    url = (tmp_path / "remote").as_uri()
    r = _run(_cmd(bert, data, url, None), fail="0:3:kill")
    assert r.returncode != 0
    with pytest.raises(featstore.StoreError, match="incomplete"):
        featstore.open_store(url)
    records = writable_backend(url, "zarr").committed_segments()
    assert len(records) == 3
    victim = sorted(f for f in next(iter(records.values()))["files"] if "/L2/tokens/c/" in f)[0]
    path = tmp_path / "remote" / victim
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    r = _run(_cmd(bert, data, url, None))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 resumed" in r.stdout, r.stdout
    _assert_same(url, reference)


def test_url_out_refuses_hdf5_and_foreign_prefix(tmp_path, bert, data):
    r = _run(_cmd(bert, data, "s3://bucket/x", None) + ["--format", "hdf5"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "takes --format zarr" in r.stderr, r.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = _run(_cmd(bert, data, (tmp_path / "other").as_uri(), None))
    assert r.returncode == 2 and "not empty and holds no featstore store" in r.stderr, r.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_tokenize_in_slices_equals_tokenize_all(bert, data):
    """What a rank does (a slice to plan, summed lengths, then its own rows) gives the same ids as one process."""
    from featstore.extract.inputs import load_dataset
    from featstore.extract.models import load_model
    from featstore.extract.plan import tokenize

    split = load_dataset(data, "text", None, ["label"], None).splits["train"]
    tokenizer = load_model(bert, device="cpu", dtype="float32").tokenizer
    full = tokenize(tokenizer, split, 24, "longest_first")
    parts = [tokenize(tokenizer, split, 24, "longest_first", rows=np.arange(a, b)) for a, b in [(0, 20), (20, 48)]]
    np.testing.assert_array_equal(parts[0].lengths + parts[1].lengths, full.lengths)
    assert parts[0].truncated + parts[1].truncated == full.truncated
    own = np.array([3, 30, 47, 5])
    tokenize(tokenizer, split, 24, "longest_first", rows=own, into=parts[0])
    for i in range(48):
        assert parts[0].input_ids[i] == (full.input_ids[i] if i < 20 or i in own else None)
