"""Fuzzed head.json: every hostile variant of a trained head's head.json is refused by `heads.load_head` (and the
CLI) with one line, or loads; never a traceback, a file opened outside the head, a hang, or an allocation sized by
a number in head.json (the head is built on the meta device and checked against the saved weights first)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner
from hypothesis import given, strategies as st

import heads
from featstore.errors import FeatstoreError
from tests.fuzzing import FUZZ, guarded, mutated_bytes, one_line, replaced
from tests.guarantees import record

HERE = "tests/heads/test_fuzz_head.py"
GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "golden", "v1")


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-head")
    store = str(d / "store")
    shutil.copytree(os.path.join(GOLDEN, "zarr-sentence-float16"), store)
    run = str(d / "run")
    heads.train(heads.TrainConfig("ytuning", store=store, label_column="label", out=run, epochs=1, d_head=8,
                                  n_layers=1, n_heads=2, seeds=[0], device="cpu", threads=1, progress=False,
                                  test_split=None))
    return run


def _meta(run: str) -> dict:
    with open(os.path.join(run, "head.json")) as f:
        return json.load(f)


@given(data=st.data())
@FUZZ
def test_fuzzed_head_json(head_run, data):
    import torch

    run = head_run
    with replaced(os.path.join(run, "head.json"), mutated_bytes(data, _meta(run))):
        before = torch.get_num_threads()
        with guarded(run):
            try:
                head = heads.load_head(run)
                assert isinstance(head.model, torch.nn.Module)
            except FeatstoreError as e:
                one_line(str(e))
        assert torch.get_num_threads() == before
    record("fuzz-head", f"{HERE}::test_fuzzed_head_json", 1, 1)


def test_huge_architecture_is_refused_before_any_allocation(head_run):
    """A width of 10^9 in head.json would ask for petabytes; it is refused against the saved weights, and a
    count of 10^9 blocks before even the meta-device build."""
    run = head_run
    meta = _meta(run)
    meta["architecture"]["d_head"] = 10 ** 9
    meta["architecture"]["n_heads"] = 1
    with replaced(os.path.join(run, "head.json"), json.dumps(meta).encode()):
        with guarded(run), pytest.raises(heads.HeadError, match="(weights do not fit|cannot be built).*the head is damaged"):
            heads.load_head(run)
        from cli.heads_cli import main

        r = CliRunner().invoke(main, ["eval", run, "--store", os.path.join(GOLDEN, "zarr-sentence-float16")])
        assert r.exit_code == 2 and "the head is damaged" in r.stderr and "\n" not in r.stderr.strip(), r.output
    meta["architecture"]["n_layers"] = 10 ** 9
    with replaced(os.path.join(run, "head.json"), json.dumps(meta).encode()):
        with pytest.raises(heads.HeadError, match="n_layers = 1000000000 cannot fit"):
            heads.load_head(run)
