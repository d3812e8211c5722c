"""Full disks and polite stops, in real subprocesses: a write refused by the OS (RLIMIT_FSIZE lowered in the child
at a known point, so the write fails with EFBIG as a full disk fails with ENOSPC) stops extract, convert and pull
with one line naming the store and the room still needed; committed work is kept and the same command, re-run
with room, finishes an equal store. SIGTERM stops extraction at its next batch (pull at its next file) with
committed work kept."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import featstore
from featstore.errors import StoreError
from featstore.store import local_backend
from featstore.verify import verify
from tests.data.golden.make_golden import store_digests
from tests.guarantees import record

from .conftest import ROOT

HERE = "tests/featstore/test_limits.py"
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.featstore_cli", *args]


def _extract_cmd(bert: str, splits: dict[str, str], out: str) -> list[str]:
    """The command that made `shared_store` (same settings: an equal store when it finishes)."""
    data = [a for k, v in splits.items() for a in ("--data", f"{k}={v}")]
    return _cli("extract", "--model", bert, *data, "--out", out, "--label-column", "label", "--id-column", "id",
                "--layers", "1,2", "--max-length", "24", "--segment-mb", "0.03", "--quiet", "--json")


def _run(cmd: list[str], **env: str) -> tuple[int, str, str]:
    p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, timeout=600)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def _one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _needed(line: str) -> int:
    m = re.search(r"about ([\d.]+) (B|KiB|MiB|GiB) more free space is needed", line)
    assert m, line
    return int(float(m.group(1)) * UNITS[m.group(2)])


def _segment_bytes(path: str, skip: set[str]) -> int:
    with featstore.open_store(path) as s:
        return sum(f["size"] for seg in s.manifest["segments"] if f"{seg['split']}/{seg['name']}" not in skip
                   for f in seg["files"].values())


def _finishes_equal(cmd: list[str], out: str, reference: str) -> dict:
    """Re-run `cmd` with room and no signal: it succeeds and `out` equals `reference`; returns its JSON summary."""
    rc, out_json, err = _run(cmd)
    assert rc == 0, err
    assert store_digests(out) == store_digests(reference) and verify(out) == []
    return json.loads(out_json)


def _pull_cmd(shared_store: str, tmp_path) -> tuple[str, list[str]]:
    """Publish `shared_store` to a directory URL; (destination, the pull command that fetches it)."""
    from featstore.share import push

    url = "file://" + str(tmp_path / "published" / "sst2")
    push(shared_store, url, progress=False)
    dest = str(tmp_path / "copy")
    return dest, _cli("pull", url, dest, "--jobs", "1", "--quiet", "--json")


def test_extract_out_of_space_keeps_segments_and_resumes(bert, splits, shared_store, tmp_path):
    out = str(tmp_path / "store")
    rc, _, err = _run(_extract_cmd(bert, splits, out), FEATSTORE_TEST_FSIZE="segment-committed:2:0")
    line = _one_line(err)
    assert rc == 2 and line.startswith(f"error: --out {out}: out of disk space (File too large)"), line
    assert "2 of " in line and "segments are committed and kept" in line and "re-run the same command" in line
    done = local_backend(out).committed_segments()
    assert len(done) == 2
    actual = _segment_bytes(shared_store, set(done))  # what the remaining segments really take
    assert actual / 2 <= _needed(line) <= actual * 2
    with pytest.raises(StoreError, match="incomplete"):
        featstore.open_store(out)

    summary = _finishes_equal(_extract_cmd(bert, splits, out), out, shared_store)  # room again
    assert summary["segments_resumed"] == 2 and summary["segments_total"] > 2
    record("disk-full", f"{HERE}::test_extract_out_of_space_keeps_segments_and_resumes", 1, 1)


def test_convert_out_of_space_keeps_segments_and_resumes(shared_store, tmp_path):
    from featstore.convert import convert

    whole = str(tmp_path / "whole")
    convert(shared_store, whole, "int8")
    dst = str(tmp_path / "int8")
    cmd = _cli("convert", shared_store, dst, "--encoding", "int8", "--json")
    rc, _, err = _run(cmd, FEATSTORE_TEST_FSIZE="segment-committed:2:0")
    line = _one_line(err)
    assert rc == 2 and line.startswith(f"error: DST {dst}: out of disk space") and "2 of " in line, line
    assert len(local_backend(dst).committed_segments()) == 2
    assert _needed(line) > 0
    assert _finishes_equal(cmd, dst, whole)["segments_resumed"] == 2
    record("disk-full", f"{HERE}::test_convert_out_of_space_keeps_segments_and_resumes", 1, 1)


def test_pull_out_of_space_keeps_files_and_resumes(shared_store, tmp_path):
    dest, cmd = _pull_cmd(shared_store, tmp_path)
    rc, _, err = _run(cmd, FEATSTORE_TEST_FSIZE="file-transferred:5:0")
    line = _one_line(err)
    assert rc == 2 and line.startswith(f"error: pull into {dest}: out of disk space"), line
    assert "5 of " in line and "files are fetched and kept" in line
    assert _needed(line) > 0 and not os.path.exists(dest)
    assert _finishes_equal(cmd, dest, shared_store)["resumed"] == 5
    record("disk-full", f"{HERE}::test_pull_out_of_space_keeps_files_and_resumes", 1, 1)


def _sigterm_at(cmd: list[str], point: str, k: int, steps) -> tuple[int, str]:
    """Run `cmd` handing over at every pass through `point`; SIGTERM it while it holds the k-th, and let
    everything go on until it exits. Returns (exit code, the one line it printed)."""
    steps.mkdir()
    env = {**os.environ, "FEATSTORE_TEST_STEP": f"{point}:{steps}"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, n = time.monotonic() + 300, 1
    while proc.poll() is None:
        assert time.monotonic() < deadline
        if (steps / f"reached-{n}").exists():
            if n == k:
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)  # the handler runs in the child's idle main thread before this step is released
            (steps / f"go-{n}").touch()
            n += 1
        time.sleep(0.01)
    return proc.returncode, _one_line(proc.stderr.read().decode())


def test_sigterm_stops_extraction_at_the_next_batch_and_resumes(bert, splits, shared_store, tmp_path):
    """SIGTERM while the forward loop holds its 3rd batch: the run stops there; the writer commits what it holds."""
    out = str(tmp_path / "store")
    rc, line = _sigterm_at(_extract_cmd(bert, splits, out), "batch", 3, tmp_path / "steps")
    assert rc == 143 and line.startswith("interrupted: stopped by SIGTERM; committed segments are kept"), line
    done = local_backend(out).committed_segments()
    with featstore.open_store(shared_store) as s:
        total = len(s.manifest["segments"])
    assert 1 <= len(done) <= 2 < total  # one segment per batch here: at most the two before the 3rd
    assert _finishes_equal(_extract_cmd(bert, splits, out), out, shared_store)["segments_resumed"] == len(done)
    record("sigterm", f"{HERE}::test_sigterm_stops_extraction_at_the_next_batch_and_resumes", 1, 1)


def test_sigterm_stops_pull_at_the_next_file_and_resumes(shared_store, tmp_path):
    dest, cmd = _pull_cmd(shared_store, tmp_path)
    rc, line = _sigterm_at(cmd, "file-transferred", 3, tmp_path / "steps")
    assert rc == 143 and line.startswith("interrupted: stopped by SIGTERM; the files fetched so far are kept"), line
    assert not os.path.exists(dest)
    assert _finishes_equal(cmd, dest, shared_store)["resumed"] >= 3  # the 3rd, or one more fetched meanwhile
    record("sigterm", f"{HERE}::test_sigterm_stops_pull_at_the_next_file_and_resumes", 1, 1)
