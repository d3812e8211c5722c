"""`--project N`: a PCA basis per layer kept in the store; every row, pooled vector and label-name feature goes
through it; convert projects an existing store; heads train on it and predict applies it to new texts."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import featstore
from cli.featstore_cli import main
from featstore.convert import convert
from featstore.extract import ExtractConfig, extract
from featstore.store.projection import fit_pca, project

WIDTH = 8


@pytest.fixture(scope="module")
def pair(tmp_path_factory, bert, splits):
    """The same extraction twice in float32, unprojected and projected to WIDTH."""
    d = tmp_path_factory.mktemp("proj")
    common = dict(model=bert, data=splits, label_columns=["label"], id_column="id", layers="1,2", max_length=16,
                  dtype="float32", segment_mb=0.01, progress=False)
    extract(ExtractConfig(out=str(d / "full"), **common))
    extract(ExtractConfig(out=str(d / "proj"), project=WIDTH, **common))
    return str(d / "full"), str(d / "proj"), common


def test_projected_features_are_the_projection_of_the_full_ones(pair):
    full, proj, _ = pair
    with featstore.open_store(full) as a, featstore.open_store(proj) as b:
        assert (b.width, b.hidden_size, a.width) == (WIDTH, 32, 32)
        for k in b.layers:
            mean, basis = b.projection(k)
            np.testing.assert_allclose(basis.T @ basis, np.eye(WIDTH), atol=1e-5)  # orthonormal directions
            for name in ("train", "test"):
                sa, sb = a.split(name), b.split(name)
                np.testing.assert_allclose(sb.tokens(k, 0, sb.n_tokens), project(sa.tokens(k, 0, sa.n_tokens), mean, basis),
                                           atol=1e-4)
                for kind in ("cls", "mean"):
                    np.testing.assert_allclose(sb.pooled(kind, k), project(sa.pooled(kind, k), mean, basis), atol=1e-4)
            np.testing.assert_allclose(b.label_features("label", k), project(a.label_features("label", k), mean, basis),
                                       atol=1e-4)
            # fitted on the training split (all of it: it is below the sample budget): its principal directions
            want_mean, want_basis = fit_pca(a.split("train").tokens(k, 0, a.split("train").n_tokens), WIDTH)
            np.testing.assert_allclose(mean, want_mean, atol=1e-4)
            np.testing.assert_allclose(np.abs(basis.T @ want_basis).diagonal(), 1.0, atol=1e-3)
        assert b.fingerprint != a.fingerprint and b.manifest["settings"]["project"] == WIDTH


def test_resume_reuses_the_stored_projection(pair, tmp_path):
    import shutil

    _, proj, common = pair
    copy = str(tmp_path / "copy")
    shutil.copytree(proj, copy)
    with open(os.path.join(copy, "manifest.json")) as f:
        m = json.load(f)
    victim = m["segments"][-1]
    shutil.rmtree(os.path.join(copy, "segments", victim["split"], victim["name"]))
    m["complete"] = False  # as a killed run leaves it (the projection was written first)
    with open(os.path.join(copy, "manifest.json"), "w") as f:
        json.dump(m, f)
    s = extract(ExtractConfig(out=copy, project=WIDTH, **common))
    assert s.segments_resumed == len(m["segments"]) - 1
    with featstore.open_store(proj) as a, featstore.open_store(copy) as b:
        assert a.fingerprint == b.fingerprint
        for name in a.splits:
            np.testing.assert_array_equal(a.split(name).tokens(2, 0, a.split(name).n_tokens),
                                          b.split(name).tokens(2, 0, b.split(name).n_tokens))


def test_convert_projects_and_encodes_an_existing_store(pair, tmp_path):
    full, _, _ = pair
    out = str(tmp_path / "c")
    r = convert(full, out, "int8", project=WIDTH)
    with featstore.open_store(full) as a, featstore.open_store(out) as c:
        assert c.width == WIDTH and c.encoding == "int8"
        assert c.manifest["derived_from"]["transform"]["project"] == WIDTH and c.fingerprint == r.fingerprint
        for k in c.layers:
            mean, basis = c.projection(k)
            sa, sc = a.split("train"), c.split("train")
            want = project(sa.tokens(k, 0, sa.n_tokens), mean, basis)
            got = sc.tokens(k, 0, sc.n_tokens)
            assert np.abs(got - want).max() < 0.02 * np.abs(want).max()  # int8 rounding only
    from featstore.verify import verify

    assert verify(out) == []


def test_heads_train_on_a_projected_store_and_predict_projects_new_texts(pair, tmp_path):
    from heads import TrainConfig, evaluate, predict, train

    _, proj, _ = pair
    out = str(tmp_path / "run")
    train(TrainConfig("ytuning", store=proj, label_column="label", out=out, seeds=[0], epochs=1, d_head=16,
                      n_layers=1, n_heads=2, progress=False))
    assert os.path.isfile(os.path.join(out, "projection.safetensors"))
    with featstore.open_store(proj) as s:
        sp = s.split("test")
        ids = sp.example_ids
    import pyarrow.parquet as pq

    rows = {r["id"]: r["text"] for r in pq.read_table(pair[2]["data"]["test"]).to_pylist()}
    texts = [rows[i] for i in ids]
    got = predict(out, texts)
    by_id = {p["id"]: p for p in evaluate(out, proj, "test").predictions}
    for text_pred, i in zip(got, ids):
        names = sorted(text_pred["probabilities"])
        np.testing.assert_allclose([text_pred["probabilities"][n] for n in names],
                                   [by_id[i]["probabilities"][n] for n in names], atol=2e-3)


@pytest.mark.parametrize("args, fragment", [(["--project", "0"], "--project"), (["--project", "64"], "exceeds")])
def test_bad_project_values(bert, splits, tmp_path, args, fragment):
    r = CliRunner().invoke(main, ["extract", "--model", bert, "--data", f"train={splits['train']}", "--quiet",
                                  "--out", str(tmp_path / "s"), *args])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and fragment in err, err
    assert not (tmp_path / "s").exists()
