"""Head directories written by the previous release (tests/data/heads_v_prev, made by
`python -m tests.heads.prev_release write`) load, evaluate and predict exactly as they did then."""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import build_model

from .prev_release import RUNS, build_stores, outputs

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "heads_v_prev")


@pytest.fixture(scope="module")
def now(tmp_path_factory):
    d = tmp_path_factory.mktemp("prev")
    model = build_model("bert", str(d / "bert"))  # seeded: the very weights the heads were trained on
    stores = build_stores(model, str(d / "data"))
    return outputs({name: os.path.join(DATA, name) for name in RUNS}, stores, model)


def close(a, b, path=""):
    """Equal structure; floats within 1e-5."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}/{i}")
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=1e-5), path
    else:
        assert a == b, path


@pytest.mark.parametrize("name", sorted(RUNS))
def test_previous_release_heads_give_the_same_outputs(now, name):
    with open(os.path.join(DATA, "expected.json")) as f:
        want = json.load(f)[name]
    close(want, json.loads(json.dumps(now[name])), name)
