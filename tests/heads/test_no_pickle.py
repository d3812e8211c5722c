"""A head directory and an export load with unpickling disabled: head.json, safetensors, metrics, logs."""
from __future__ import annotations

from click.testing import CliRunner

from cli.heads_cli import main
from heads import TrainConfig, evaluate, load_head, train
from heads.export import export_head, load_export


def test_heads_load_with_unpickling_disabled(ytuning_run, stores, tmp_path, no_unpickling):
    run, result = ytuning_run
    head = load_head(run)
    assert head.seed == result.best_seed
    assert evaluate(run, stores["cls"], "test").metrics == next(
        s for s in result.seeds if s.seed == result.best_seed).metrics["test"]
    export_head(run, str(tmp_path / "y.safetensors"))
    tensors, meta = load_export(str(tmp_path / "y.safetensors"))
    assert meta["kind"] == "ytuning" and set(tensors) == set(head.model.state_dict())
    lin = str(tmp_path / "linear")
    train(TrainConfig("linear", store=stores["h5"], label_column="label", out=lin, epochs=1, progress=False))
    assert evaluate(lin, stores["h5"], "test").n_examples == 40
    r = CliRunner().invoke(main, ["compare", run, lin, "--json"])
    assert r.exit_code == 0, r.output
