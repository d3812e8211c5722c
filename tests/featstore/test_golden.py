"""Compatibility: stores written by earlier releases (tests/data/golden/v*/) open, read bit-exactly and verify;
a store of a newer format version is refused with one line naming the version it needs."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

import featstore
from cli.featstore_cli import main
from featstore.errors import StoreError
from featstore.store.manifest import FORMAT_VERSION
from featstore.verify import verify
from tests.data.golden.make_golden import store_digests
from tests.guarantees import record

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "golden")
VERSIONS = sorted(d for d in os.listdir(GOLDEN) if d.startswith("v") and d[1:].isdigit())
CASES = [(v, name) for v in VERSIONS for name in json.load(open(os.path.join(GOLDEN, v, "digests.json")))["stores"]]


def test_every_format_version_up_to_this_one_has_golden_stores():
    assert VERSIONS == [f"v{n}" for n in range(1, FORMAT_VERSION + 1)]
    kinds = {name for _, name in CASES}
    for needed in ("zarr-sentence-float16", "hdf5-sentence-float16.h5", "zarr-sentence-bfloat16",
                   "zarr-sentence-int8", "zarr-sentence-projected", "zarr-token-float16", "hdf5-span-float16.h5"):
        assert needed in kinds


@pytest.fixture(scope="module")
def golden_copy(tmp_path_factory):
    """A copy of the golden stores: reading must work from anywhere, and tests never write into the tree."""
    dst = tmp_path_factory.mktemp("golden")
    for v in VERSIONS:
        shutil.copytree(os.path.join(GOLDEN, v), dst / v)
    return dst


@pytest.mark.parametrize("version,name", CASES)
def test_golden_store_reads_bit_exactly_and_verifies(golden_copy, version, name):
    path = str(golden_copy / version / name)
    want = json.load(open(golden_copy / version / "digests.json"))["stores"][name]
    got = store_digests(path)
    assert got.keys() == want.keys()
    assert [k for k in want if got[k] != want[k]] == []
    assert verify(path) == []
    record("golden", "tests/featstore/test_golden.py::test_golden_store_reads_bit_exactly_and_verifies", 1, 1)


def _newer(golden_copy, tmp_path, name: str, version) -> str:
    path = str(tmp_path / name)
    src = str(golden_copy / VERSIONS[-1] / name)
    shutil.copytree(src, path) if os.path.isdir(src) else shutil.copy(src, path)
    if name.endswith(".h5"):
        import h5py

        with h5py.File(path, "r+") as f:
            m = json.loads(bytes(f.attrs["manifest"]) if not isinstance(f.attrs["manifest"], str)
                           else f.attrs["manifest"])
            m["format_version"] = version
            f.attrs["manifest"] = json.dumps(m)
    else:
        mp = os.path.join(path, "manifest.json")
        m = json.load(open(mp))
        m["format_version"] = version
        json.dump(m, open(mp, "w"))
    return path


@pytest.mark.parametrize("name", ["zarr-sentence-float16", "hdf5-sentence-float16.h5"])
def test_newer_format_version_is_refused_with_the_version_needed(golden_copy, tmp_path, name):
    newer = FORMAT_VERSION + 1
    path = _newer(golden_copy, tmp_path, name, newer)
    with pytest.raises(StoreError, match=f"store format version {newer} needs a featstore that reads format "
                                         f"version {newer}"):
        featstore.open_store(path)
    for cmd in (["info", path], ["verify", path, "--quiet"]):
        r = CliRunner().invoke(main, cmd)
        err = r.stderr.strip()
        assert r.exit_code == 2 and "\n" not in err and f"format version {newer}" in err and "upgrade" in err, err
    record("newer-version", "tests/featstore/test_golden.py::test_newer_format_version_is_refused_with_the_version_"
           "needed", 3, 3)  # open_store, info, verify


@pytest.mark.parametrize("bad", [0, -1, "1", 1.0, None, True, [1]])
def test_nonsense_format_version_is_damage_not_a_version(golden_copy, tmp_path, bad):
    path = _newer(golden_copy, tmp_path, "zarr-sentence-float16", bad)
    with pytest.raises(StoreError, match="is not a format version"):
        featstore.open_store(path)
