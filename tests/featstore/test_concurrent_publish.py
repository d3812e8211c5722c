"""Concurrent publishing, by construction: two pushes racing for one name (on S3 and on a shared directory), forced
past the `is the name free?` check before either claims it (a test barrier, not timing): exactly one wins, the
other exits 2 with one line, and the name holds the winner's store whole. Pushes of the same store both succeed.
A reader opening the name at every step of a publish sees no store or the whole new one, never a part."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import featstore
from featstore.errors import StoreError
from featstore.share import ls, push
from featstore.store.manifest import transfer_files
from featstore.verify import verify
from tests.data.golden.make_golden import store_digests
from tests.guarantees import record

from .conftest import ROOT

HERE = "tests/featstore/test_concurrent_publish.py"


@pytest.fixture(scope="module")
def other_store(tmp_path_factory, bert, splits):
    """A store that differs from `shared_store` in its features (max_length), hence in its fingerprint."""
    from featstore.extract import ExtractConfig, extract

    out = str(tmp_path_factory.mktemp("other") / "sst2-short")
    extract(ExtractConfig(model=bert, data=splits, out=out, label_columns=["label"], id_column="id", layers="1,2",
                          max_length=16, progress=False))
    return out


def _push(src: str, url: str) -> list[str]:
    return [sys.executable, "-m", "cli.featstore_cli", "push", src, url, "--quiet", "--jobs", "2"]


def _race(cmds: list[list[str]], directory) -> list[tuple[int, str]]:
    """Run the pushes at once; each waits at the claim until all have passed the checks before it."""
    directory.mkdir()
    env = {**os.environ, "FEATSTORE_TEST_BARRIER": f"push-claim:{directory}:{len(cmds)}"}
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    out = [(p.wait(timeout=300), p.stderr.read().decode()) for p in procs]
    assert len(os.listdir(directory)) == len(cmds)  # every push reached the claim: both were past the check
    return out


def _published_files(remote, url: str) -> list[str]:
    return sorted(remote.files(url))


def _store_files(path: str) -> list[str]:
    with featstore.open_store(path) as s:
        return sorted(["manifest.json", *transfer_files(s.manifest)])


@pytest.mark.parametrize("rounds", [2])
def test_two_pushes_of_different_stores_exactly_one_wins(remote, shared_store, other_store, tmp_path, rounds):
    sources = {shared_store: store_digests(shared_store), other_store: store_digests(other_store)}
    winners = set()
    for r in range(rounds):
        url = remote.url(f"race{r}")
        (a, ea), (b, eb) = _race([_push(shared_store, url), _push(other_store, url)], tmp_path / f"barrier{r}")
        assert sorted([a, b]) == [0, 2], (ea, eb)
        winner, loser_err = (shared_store, eb) if a == 0 else (other_store, ea)
        line = loser_err.strip()
        assert line.startswith("error: ") and "\n" not in line and "different store" in line, loser_err
        assert remote.read(url + "/manifest.json") == open(os.path.join(winner, "manifest.json"), "rb").read()
        assert _published_files(remote, url) == _store_files(winner)  # nothing of the loser, no marker left
        assert verify(url, cache_dir=str(tmp_path / f"vc{r}")) == []
        assert store_digests(url) == sources[winner]
        winners.add(winner)
    record("publish-race", f"{HERE}::test_two_pushes_of_different_stores_exactly_one_wins[{remote.kind}]",
           rounds, rounds)


def test_two_pushes_of_the_same_store_both_succeed(remote, shared_store, tmp_path):
    import shutil

    twin = str(tmp_path / "twin")
    shutil.copytree(shared_store, twin)  # the same store from another path (a teammate's copy)
    url = remote.url("same")
    results = _race([_push(shared_store, url), _push(twin, url)], tmp_path / "barrier")
    assert [rc for rc, _ in results] == [0, 0], results
    assert _published_files(remote, url) == _store_files(shared_store)
    assert verify(url, cache_dir=str(tmp_path / "vc")) == []
    record("publish-same", f"{HERE}::test_two_pushes_of_the_same_store_both_succeed[{remote.kind}]", 1, 1)


def test_reader_during_publish_sees_nothing_or_the_whole_store(remote, shared_store, other_store, tmp_path):
    """The publisher stops after every uploaded file; a reader opens the name there each time."""
    url = remote.url("watched")
    steps = tmp_path / "steps"
    steps.mkdir()
    env = {**os.environ, "FEATSTORE_TEST_STEP": f"file-transferred:{steps}"}
    proc = subprocess.Popen(_push(other_store, url)[:-2] + ["--jobs", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    looks, k = 0, 0
    try:
        while True:
            k += 1
            while not (steps / f"reached-{k}").exists() and proc.poll() is None:
                time.sleep(0.005)
            if proc.poll() is not None and not (steps / f"reached-{k}").exists():
                break
            with pytest.raises(StoreError, match="unfinished upload"):  # never a part of the store
                featstore.open_store(url, cache_dir=str(tmp_path / "c"))
            assert [e["status"] for e in ls(remote.url())[0]] == ["unfinished"]
            if k % 8 == 1:  # a different store's push meanwhile is refused, and leaves the publish alone
                with pytest.raises(StoreError, match="unfinished upload of a different store"):
                    push(shared_store, url, progress=False)
            looks += 1
            (steps / f"go-{k}").touch()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.wait() == 0, proc.stderr.read().decode()
    assert looks == len(transfer_files(featstore.open_store(other_store).manifest))
    assert store_digests(url) == store_digests(other_store) and verify(url, cache_dir=str(tmp_path / "v")) == []
    record("publish-read", f"{HERE}::test_reader_during_publish_sees_nothing_or_the_whole_store[{remote.kind}]",
           looks, looks)


def test_exclusive_create_has_one_winner_per_race(remote):
    """The primitive under the claim: many threads creating one name at once; exactly one gets it, and the
    name holds that one's bytes whole."""
    from concurrent.futures import ThreadPoolExecutor

    from featstore.io.transport import Remote

    races, racers = 10, 4
    for r in range(races):
        target = Remote(remote.url(f"claim{r}"))
        with ThreadPoolExecutor(racers) as pool:
            won = list(pool.map(lambda i: target.create_exclusive("x.json", f"racer {i}".encode() * 100),
                                range(racers)))
        assert won.count(True) == 1
        assert remote.read(remote.url(f"claim{r}", "x.json")) == f"racer {won.index(True)}".encode() * 100
    record("publish-claim", f"{HERE}::test_exclusive_create_has_one_winner_per_race[{remote.kind}]", races, races)
