"""Tuning the top layers from a store (tiny random BERT and DeBERTa-v2): the tuned path at initialisation computes
what the full frozen backbone computes, only the top layers are read from the checkpoint, predict equals eval,
lossy or unsuitable stores and other architectures are refused in one line."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import featstore
from cli.heads_cli import main
from featstore.extract import ExtractConfig, extract
from heads import TrainConfig, evaluate, load_head, predict, train
from heads.errors import InputError, StoreError
from heads.top_layers import TOP_WEIGHTS, load_top_layers, plan_top
from tests.conftest import make_rows, write_jsonl

FAST = dict(epochs=2, d_head=16, n_layers=1, n_heads=2, progress=False, batch_size=16)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("top-data")
    rows = {"train": make_rows(32, 21), "validation": make_rows(10, 22), "test": make_rows(10, 23)}
    return {"paths": {k: write_jsonl(d / f"{k}.jsonl", v) for k, v in rows.items()}, "rows": rows, "dir": d}


def _store(model: str, data, name: str, **kw) -> str:
    out = str(data["dir"] / name)
    if not os.path.exists(out):
        extract(ExtractConfig(model=model, data=data["paths"], out=out, label_columns=["label"], id_column="id",
                              max_length=32, batch_tokens=256, progress=False, **kw))
    return out


@pytest.fixture(scope="module", params=["bert", "deberta"])
def kind(request, models_dir, data):
    """Each family with a float32 store of every layer (0 = embeddings .. 2)."""
    model = models_dir[request.param]
    return {"name": request.param, "model": model, "store": _store(model, data, f"{request.param}-f32",
                                                                   layers="0,1,2", dtype="float32")}


def _full_forward(model: str, texts: list[str]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    net = AutoModel.from_pretrained(model).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return net(**enc, output_hidden_states=True).hidden_states, enc["attention_mask"].bool()


@pytest.mark.parametrize("m", [1, 2])
def test_top_layers_compute_the_full_model(kind, data, m):
    with featstore.open_store(kind["store"]) as st:
        top, read = load_top_layers(st.manifest, m)
        top.eval()
        sp = st.split("test")
        for i in range(sp.n_examples):
            x = torch.from_numpy(sp.example(i, [2 - m]))[None, :, 0]  # (1, T, D) stored hidden_states[N-m]
            with torch.no_grad():
                outs = top(x, torch.ones(x.shape[:2], dtype=torch.bool))
            want = sp.example(i, [2])[:, 0]  # (T, D): the full backbone's last layer, as extracted
            np.testing.assert_allclose(outs[-1][0].numpy(), want, atol=1e-4, rtol=0)
        # only the top layers (and DeBERTa's relative-position tensors) were read from the checkpoint
        first = 2 - m
        assert read.verified.startswith("per-layer sha256") and read.files == ["model.safetensors"]
        for key in read.keys:
            ok = [f"encoder.layer.{j}." for j in range(first, 2)] + ["encoder.rel_embeddings.", "encoder.LayerNorm."]
            assert any(key.startswith(p) for p in ok), key
        assert not any(k.startswith("embeddings.") for k in read.keys)
        if m == 1:
            assert not any(k.startswith("encoder.layer.0.") for k in read.keys)
        assert any(k.startswith("encoder.rel_embeddings") for k in read.keys) == (kind["name"] == "deberta")


def test_frozen_run_equals_the_full_backbone_and_predict_equals_eval(kind, data, tmp_path):
    """top-lr 0: the head is fed exactly the full frozen model's features (stored N-1 -> tuned layer N)."""
    out = str(tmp_path / "lin")
    r = train(TrainConfig("linear", store=kind["store"], label_column="label", out=out, tune_top_layers=1,
                          top_lr=0.0, **FAST))
    saved = load_file(os.path.join(out, TOP_WEIGHTS))
    ckpt = load_file(os.path.join(kind["model"], "model.safetensors"))
    for k, v in saved.items():  # frozen: the checkpoint's layer 1, unchanged
        full = k.replace("encoder.layer.0.", "encoder.layer.1.")
        assert torch.equal(v, ckpt[full]), k
    head = load_head(out)
    assert head.layers == [1] and head.meta["top_layers"]["head_layers"] == [2]
    texts = [row["text"] for row in data["rows"]["test"]]
    ev = evaluate(out, kind["store"], "test")
    assert ev.metrics["accuracy"] == pytest.approx(r.summary["test"]["accuracy"]["mean"])
    hs, mask = _full_forward(kind["model"], texts)
    w = mask.float()[:, :, None]
    pooled = ((hs[2] * w).sum(1) / w.sum(1))[:, None]  # (B, 1, D): mean-pooled last layer of the full backbone
    with torch.no_grad():
        full = head.model.head(pooled).softmax(-1).numpy()
    names = head.label_names
    for p, e, f in zip(predict(out, texts), ev.predictions, full):
        assert p["label"] == e["label"]
        np.testing.assert_allclose([e["probabilities"][n] for n in names], f, atol=1e-5)
        np.testing.assert_allclose([p["probabilities"][n] for n in names], f, atol=1e-4)


def test_ytuning_tunes_the_top_layers_and_predict_equals_eval(kind, data, tmp_path):
    out = str(tmp_path / "yt")
    r = train(TrainConfig("ytuning", store=kind["store"], label_column="label", out=out, tune_top_layers=2,
                          top_lr=1e-3, seeds=[0, 1], layers="0", **FAST))
    head = load_head(out)
    assert head.layers == [0] and head.meta["top_layers"]["head_layers"] == [0, 1, 2]
    assert r.trainable_parameters > sum(p.numel() for p in head.model.head.parameters())
    assert os.path.isfile(os.path.join(out, "seeds", "1", TOP_WEIGHTS))
    saved = load_file(os.path.join(out, TOP_WEIGHTS))
    ckpt = load_file(os.path.join(kind["model"], "model.safetensors"))
    assert not torch.equal(saved["encoder.layer.1.output.dense.weight"], ckpt["encoder.layer.1.output.dense.weight"])
    ev = evaluate(out, kind["store"], "test")
    assert ev.metrics["accuracy"] == pytest.approx(r.summary["test"]["accuracy"]["mean"] if False else
                                                   r.seeds[[s.seed for s in r.seeds].index(r.best_seed)]
                                                   .metrics["test"]["accuracy"])
    texts = [row["text"] for row in data["rows"]["test"]]
    for p, e in zip(predict(out, texts), ev.predictions):
        assert p["label"] == e["label"]
        for n in head.label_names:
            assert p["probabilities"][n] == pytest.approx(e["probabilities"][n], abs=1e-4)


def test_refusals(kind, data, tmp_path):
    with featstore.open_store(kind["store"]) as st:
        manifest = st.manifest
    other = copy.deepcopy(manifest)
    other["model"]["config"]["model_type"] = "gpt2"
    with pytest.raises(InputError, match="supports the bert"):
        plan_top(other, [0, 1, 2], 1, "tokens", [0, 1, 2])
    with pytest.raises(InputError, match="between 1 and"):
        plan_top(manifest, [0, 1, 2], 3, "tokens", [0, 1, 2])
    with pytest.raises(StoreError, match="re-extract with --layers including 0"):
        plan_top(manifest, [1, 2], 2, "tokens", [1, 2])
    lossy = copy.deepcopy(manifest)
    lossy["settings"].update(encoding="int8", dtype="float32")
    with pytest.raises(StoreError, match="lossy"):
        plan_top(lossy, [0, 1, 2], 1, "pooled", [2])
    projected = copy.deepcopy(manifest)
    projected["settings"]["project"] = 8
    with pytest.raises(StoreError, match="projected"):
        plan_top(projected, [0, 1, 2], 1, "pooled", [2])


@pytest.mark.parametrize("extra,args,msg", [
    ({"layers": "2", "dtype": "float16"}, ["--tune-top-layers", "1"], "re-extract with --layers including 1"),
    ({"layers": "1,2", "encoding": "int8"}, ["--tune-top-layers", "1"], "lossy"),
    ({"layers": "1,2", "dtype": "float16"}, ["--tune-top-layers", "1", "--top-lr", "-1"], "--top-lr"),
])
def test_cli_refuses_in_one_line(models_dir, data, tmp_path, extra, args, msg):
    store = _store(models_dir["bert"], data, "bert-" + "-".join(f"{k}{v}" for k, v in extra.items()).replace(",", ""),
                   **extra)
    res = CliRunner().invoke(main, ["train", "linear", "--store", store, "--label-column", "label", "--out",
                                    str(tmp_path / "run"), "--quiet", *args])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and msg in lines[0], res.output


def test_export_loads_into_the_full_model(models_dir, data, tmp_path):
    """`heads export`: the tuned layers under the full model's names; loaded into it, the full model computes
    the tuned run's features."""
    from transformers import AutoModel, AutoTokenizer

    model = models_dir["bert"]
    store = _store(model, data, "bert-f32", layers="0,1,2", dtype="float32")
    run = str(tmp_path / "yt")
    train(TrainConfig("ytuning", store=store, label_column="label", out=run, tune_top_layers=1, top_lr=1e-3,
                      layers="1", **FAST))
    out = str(tmp_path / "export" / "head.safetensors")
    res = CliRunner().invoke(main, ["export", run, "--out", out])
    assert res.exit_code == 0, res.output
    tensors = load_file(out.replace(".safetensors", ".backbone.safetensors"))
    assert tensors and all(k.startswith("encoder.layer.1.") for k in tensors)
    net = AutoModel.from_pretrained(model).eval()
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    assert not unexpected and not any(k.startswith("encoder.layer.1.") for k in missing)
    head = load_head(run)
    tok = AutoTokenizer.from_pretrained(model)
    enc = tok(["the cat sits on the mat", "goal"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hs = net(**enc, output_hidden_states=True).hidden_states
        mask = enc["attention_mask"].bool()
        x = hs[1][:, :, None]  # (B, T, 1, D): the frozen bottom's layer 1, as stored
        feats = head.model.features(x, mask)  # (B, T, 2, D): stored layer 1, tuned layer 2
    np.testing.assert_allclose(feats[:, :, 1][mask].numpy(), hs[2][mask].numpy(), atol=1e-5)


def test_weights_are_checked_against_the_store(models_dir, data, capfd, tmp_path):
    """Per-layer hashes recorded at extraction: a wrong backbone is refused; an older store loads, unverified."""
    import shutil

    from safetensors.torch import save_file

    from heads.errors import HeadError

    store = _store(models_dir["deberta"], data, "deberta-f32", layers="0,1,2", dtype="float32")
    with featstore.open_store(store) as st:
        manifest = copy.deepcopy(st.manifest)
    assert {"layer.0", "layer.1", "encoder.rel_embeddings"} <= set(manifest["model"]["part_sha256"])
    other = str(tmp_path / "other")  # the same model with one weight of layer 1 changed
    shutil.copytree(models_dir["deberta"], other)
    t = load_file(os.path.join(other, "model.safetensors"))
    t["encoder.layer.1.output.dense.bias"] = t["encoder.layer.1.output.dense.bias"] + 1e-3
    save_file(t, os.path.join(other, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(HeadError, match="layer.1 weights differ from those the store was extracted with"):
        load_top_layers(manifest, 1, backbone=other)
    load_top_layers(manifest, 1)  # the right one
    bad = copy.deepcopy(manifest)
    bad["model"]["part_sha256"]["encoder.rel_embeddings"] = "0" * 64
    with pytest.raises(HeadError, match="encoder.rel_embeddings"):
        load_top_layers(bad, 1)
    old = copy.deepcopy(manifest)
    del old["model"]["part_sha256"]
    _, read = load_top_layers(old, 1)
    assert read.verified.startswith("unverified") and "unverified" in capfd.readouterr().err


def test_cli_train_and_predict(models_dir, data, tmp_path):
    store = _store(models_dir["bert"], data, "bert-f32", layers="0,1,2", dtype="float32")
    run = str(tmp_path / "run")
    res = CliRunner().invoke(main, ["train", "ytuning", "--store", store, "--label-column", "label", "--out", run,
                                    "--epochs", "1", "--d-head", "16", "--n-layers", "1", "--n-heads", "2", "--quiet",
                                    "--tune-top-layers", "1", "--top-lr", "1e-4", "--json"])
    assert res.exit_code == 0, res.output
    meta = load_head(run).meta
    assert meta["training"]["tune_top_layers"] == 1 and meta["top_layers"]["top_lr"] == 1e-4
    assert meta["top_layers"]["head_layers"] == [0, 1, 2] and meta["layers"] == [0, 1]
    res = CliRunner().invoke(main, ["predict", run, "--text", "the cat sits on the mat", "--json"])
    assert res.exit_code == 0, res.output
    assert '"label"' in res.output


def test_roberta_family_top_layer(tmp_path):
    """RoBERTa layers too (no store needed: the manifest's model section is all `load_top_layers` reads)."""
    from transformers import RobertaConfig, RobertaModel

    from featstore.extract.models import config_dict, part_hashes

    torch.manual_seed(0)
    net = RobertaModel(RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)).eval()
    net.save_pretrained(str(tmp_path / "roberta"))
    manifest = {"model": {"config": config_dict(net), "num_layers": 3, "path": str(tmp_path / "roberta"),
                          "part_sha256": part_hashes(net.state_dict())}}
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        hs = net(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        top, read = load_top_layers(manifest, 2)
        outs = top.eval()(hs[1], mask.bool())
    m = mask.bool()
    for j, o in enumerate(outs):
        np.testing.assert_allclose(o[m].numpy(), hs[2 + j][m].numpy(), atol=1e-5)
    assert all(k.startswith(("encoder.layer.1.", "encoder.layer.2.")) for k in read.keys)
