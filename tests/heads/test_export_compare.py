"""`heads export` reproduces a linear head's outputs on pooled vectors; `heads compare` tabulates runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import featstore
from cli.heads_cli import main
from heads import TrainConfig, evaluate, train
from heads.export import export_head, load_export


@pytest.fixture(scope="module")
def linear_run(stores, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "linear")
    train(TrainConfig("linear", store=stores["cls"], label_column="label", out=out, seeds=[0, 1], epochs=3,
                      progress=False))
    return out


def test_export_linear_folds_standardisation(linear_run, stores, tmp_path):
    path = str(tmp_path / "head.safetensors")
    r = CliRunner().invoke(main, ["export", linear_run, "--out", path])
    assert r.exit_code == 0, r.output
    tensors, meta = load_export(path)
    s = featstore.open_store(stores["cls"])
    layer = s.layers[-1]
    x = torch.as_tensor(s.split("test").pooled("mean", layer).astype(np.float32))  # (N, D)
    probs = (x @ tensors["weight"].T + tensors["bias"]).softmax(-1).numpy()
    ev = evaluate(linear_run, stores["cls"], "test")
    want = np.array([p["probabilities"][n] for p in ev.predictions for n in s.label_names("label")])
    got = probs[s.split("test").input_order()].reshape(-1)  # predictions are in input order
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert meta["kind"] == "linear" and meta["pooling"] == "mean"


def test_export_ytuning_state_dict(ytuning_run, tmp_path):
    """A Y-Tuning head exports its whole state dict with the metadata that rebuilds it: same outputs."""
    import json

    from heads import HeadSpec, load_head
    from heads.nets import build_head

    run, _ = ytuning_run
    export_head(run, str(tmp_path / "y.safetensors"))
    tensors, meta = load_export(str(tmp_path / "y.safetensors"))
    head = load_head(run)
    state = head.model.state_dict()
    assert meta["kind"] == "ytuning" and tensors.keys() == state.keys()
    assert all(torch.equal(tensors[k], state[k]) for k in state)
    assert json.loads(meta["layers"]) == head.layers and json.loads(meta["label_names"]) == head.label_names
    assert meta["store_fingerprint"] == head.meta["store"]["fingerprint"]
    rebuilt = build_head(HeadSpec(**json.loads(meta["architecture"]))).eval()
    rebuilt.load_state_dict(tensors)
    x, mask = torch.randn(3, 7, len(head.layers), 16), torch.ones(3, 7, dtype=torch.bool)  # (B, T, L, D), (B, T)
    mask[2, 5:] = False
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, mask), head.model(x, mask), rtol=0, atol=0)


def test_export_bad_name(linear_run, tmp_path):
    r = CliRunner().invoke(main, ["export", linear_run, "--out", str(tmp_path / "head.bin")])
    assert r.exit_code == 2 and "use a .safetensors file name" in r.stderr


def test_compare(linear_run, ytuning_run):
    run, _ = ytuning_run
    r = CliRunner().invoke(main, ["compare", run, linear_run])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "ytuning" in lines[2] and "linear" in lines[3] and "±" in lines[2]
    r = CliRunner().invoke(main, ["compare", run, "--json"])
    import json

    row = json.loads(r.output)[0]
    assert row["head"] == "ytuning" and row["test"]["n"] == 2 and 0 <= row["test"]["mean"] <= 1
    r = CliRunner().invoke(main, ["compare", "/nonexistent/run"])
    assert r.exit_code == 2


def test_undefined_metrics_are_saved_as_null_and_compared(tmp_path):
    """A metric that is undefined (NaN) is written as JSON null, so every JSON reader can read the files."""
    import json
    import math

    from heads.artifacts import _write_json
    from heads.report import format_compare

    path = tmp_path / "m.json"
    _write_json(str(path), {"summary": {"test": {"pearson": {"mean": math.nan, "std": math.inf, "n": 3}}}})
    assert json.loads(path.read_text())["summary"]["test"]["pearson"] == {"mean": None, "std": None, "n": 3}
    row = {"run": "r", "head": "ytuning", "primary_metric": "pearson", "test": {"mean": None, "std": None},
           "dev": None, "seeds": [0], "trainable_parameters": 1, "trainable_percent": None, "seconds_per_epoch": 0.1}
    assert "-" in format_compare([row]).splitlines()[2]
