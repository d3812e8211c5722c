"""Fuzzed manifests and remote listings: every hostile variant of a valid manifest is refused with one line (a
typed error) or read correctly; never a traceback, a file opened outside the store, a hang (Hypothesis deadline)
or an allocation sized by the untrusted value (tracemalloc peak)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from hypothesis import given, strategies as st

import featstore
from featstore.errors import FeatstoreError
from featstore.io.transport import printable
from featstore.share import ls, pull, push
from featstore.verify import verify
from tests.data.golden.make_golden import store_arrays
from tests.fuzzing import FUZZ, guarded, mutated_bytes, one_line, replaced
from tests.guarantees import record

from .test_golden import GOLDEN

HERE = "tests/featstore/test_fuzz.py"


@pytest.fixture(scope="module")
def store_copy(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuzz") / "store")
    shutil.copytree(os.path.join(GOLDEN, "v1", "zarr-sentence-float16"), path)
    return path


def _manifest(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _read_everything(path: str) -> str:
    """'read' or 'refused'; problems and errors must each be one line."""
    try:
        with featstore.open_store(path) as s:
            store_arrays(s)
        problems = verify(path)
    except FeatstoreError as e:
        one_line(str(e))
        return "refused"
    for p in problems:
        one_line(p)
    return "read"


@given(data=st.data())
@FUZZ
def test_fuzzed_local_manifest(store_copy, data):
    path = store_copy
    manifest = os.path.join(path, "manifest.json")
    with replaced(manifest, mutated_bytes(data, _manifest(manifest))):
        with guarded(path):
            _read_everything(path)
    record("fuzz-manifest", f"{HERE}::test_fuzzed_local_manifest", 1, 1)  # one example, survived


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A prefix holding one published store (file:// remote), and its manifest."""
    root = tmp_path_factory.mktemp("fuzz-remote")
    src = os.path.join(GOLDEN, "v1", "zarr-sentence-float16")
    url = "file://" + str(root / "prefix" / "team" / "store")
    push(src, url, progress=False)
    return root, url


@given(data=st.data(), odd_dir=st.sampled_from(["", "\x1b[2J", "..x", "é ü", "a" * 200, ".hidden", "x y"]))
@FUZZ
def test_fuzzed_remote_listing_and_pull(published, data, odd_dir):
    root, url = published
    manifest = str(root / "prefix" / "team" / "store" / "manifest.json")
    extra = root / "prefix" / odd_dir / "store2" if odd_dir else None
    raw = mutated_bytes(data, _manifest(manifest))
    dest = root / "inbox" / "copy"
    try:
        with replaced(manifest, raw):
            if extra is not None:  # a second listing entry under an odd name, with the hostile manifest too
                extra.mkdir(parents=True)
                (extra / "manifest.json").write_bytes(raw)
            with guarded(root, os.environ["FEATSTORE_CACHE_DIR"]):
                entries, problems = ls("file://" + str(root / "prefix"))
                for p in problems:
                    one_line(p)
                for e in entries:
                    assert e["name"] == printable(e["name"]) and e["url"] == printable(e["url"])
                try:
                    pull(url, str(dest), progress=False)
                    outcome = "read"
                except FeatstoreError as e:
                    one_line(str(e))
                    outcome = "refused"
            if outcome == "read":  # installed only after every file matched its checksum: it reads as any store
                with guarded(dest):
                    _read_everything(str(dest))
        record("fuzz-listing", f"{HERE}::test_fuzzed_remote_listing_and_pull", 1, 1)
    finally:
        shutil.rmtree(root / "inbox", ignore_errors=True)
        if extra is not None:
            shutil.rmtree(root / "prefix" / odd_dir)
