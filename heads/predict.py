"""`heads predict`: raw text -> backbone features (the store's settings) -> head -> the task's predictions.

The only module of `heads` that loads a backbone (and so imports `transformers`, lazily, through
featstore.extract). Features come from `featstore.extract.featurise`, extraction's own tokenization (and
word/offset alignment for token and span tasks) and forward pass, so a text that is in the store gets the
same features here as it got at extraction.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from featstore.device import pick_device
from featstore.extract.inputs import SplitData

from .artifacts import PROJECTION, LoadedHead, load_head
from .data import Features, Loader
from .errors import HeadError, InputError
from .runtime import batch_dtype, feed_segments, infer


def load_backbone(head: LoadedHead, model: str | None = None, verify: bool = True) -> Any:
    """The backbone named in head.json (or `model`), checked to be the one whose features trained the head."""
    from featstore.extract.models import load_model, tokenizer_hash, weights_hash

    bb = head.meta["backbone"]
    path = model or bb.get("path") or bb.get("name")
    try:
        lm = load_model(path, device="cpu", dtype="float32")
    except InputError as e:
        raise InputError(f"cannot load the head's backbone {path!r} ({e}); pass --model with its local directory")
    if verify:
        want = head.meta["store"]
        if tokenizer_hash(lm.tokenizer) != want["tokenizer"]["sha256"]:
            raise HeadError(f"backbone {path}: its tokenizer differs from the one the head's features were extracted "
                            "with; pass --model with the right backbone")
        if weights_hash(lm.model) != want["model"]["weights_sha256"]:
            raise HeadError(f"backbone {path}: its weights differ from those the head's features were extracted "
                            "with; pass --model with the right backbone")
    return lm


def extract_features(head: LoadedHead, lm: Any, split: SplitData, batch_size: int, device: str) -> Any:
    """Features of raw texts exactly as `featstore extract` stores them (`featstore.extract.featurise`)."""
    from featstore.extract.featurise import featurise

    bb = head.meta["backbone"]
    layers = head.layers
    if max(layers) > lm.num_layers:
        raise HeadError(f"head {head.run} reads layer {max(layers)}, but its backbone has {lm.num_layers} layers; "
                        "the head does not belong to this backbone")
    runtime = bb.get("runtime") or {}
    compute = runtime.get("compute_dtype", "float32") if device.startswith("cuda") else "float32"
    return featurise(lm, split, bb["settings"], layers, task=head.task.extraction_task,
                     keep="tokens" if head.reads == "tokens" else head.spec.pooling, batch_size=batch_size,
                     device=device, compute_dtype=compute, projection=head_projection(head, layers, device))


def predict(run: str, texts: Sequence[str], pairs: Sequence[str] | None = None, *, seed: int | None = None,
            model: str | None = None, batch_size: int = 32, device: str = "auto",
            verify_backbone: bool = True) -> list[dict[str, Any]]:
    """Predictions for raw texts, in input order: a label and probabilities (or a value) per text; tags and
    entities per sentence for token heads; an answer per (context, question) for span heads (`texts` are the
    contexts, `pairs` the questions)."""
    texts = list(texts)
    if not texts:
        raise InputError("nothing to predict: give --text or --input")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise InputError(f"input {bad[0]} is not text")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be positive")
    dev = torch.device(pick_device(device))
    head = load_head(run, seed, device=str(dev))
    task = head.task
    split, prepared = task.predict_split(texts, pairs, head.meta["backbone"])
    lm = load_backbone(head, model, verify_backbone)
    feats = extract_features(head, lm, split, batch_size, str(dev))
    source = Features.from_arrays(feats.tokens, feats.lengths, feats.pooled)
    gold = task.predict_gold(prepared, feats)
    feed_segments(source, task, head.spec, gold)
    loader = Loader(source, None, batch_size, shuffle=False, dtype=batch_dtype(dev, head.meta["store"]["dtype"]))
    outputs = infer(head.model, task, head.spec, loader, dev)  # storage order
    preds = task.decode(outputs, gold)
    question = (split.extra or {}).get("question")  # span heads of --stride stores: each window's input
    recs: list[dict[str, Any]] = [{} for _ in texts]
    for j, r in enumerate(feats.order):
        i = int(r) if question is None else int(question[r])
        if not recs[i]:  # a question's windows share its one answer
            recs[i] = task.predict_record(i, j, prepared, outputs, preds)
    return recs


def read_inputs(path: str, text_column: str | None, pair_column: str | None) -> tuple[list[str], list[str] | None]:
    """Texts from a file: .jsonl (objects with the store's text column, or `text`) or plain text, one per line."""
    import json
    import os

    if not os.path.isfile(path):
        raise InputError(f"--input {path}: no such file")
    texts, pairs = [], []
    with open(path, encoding="utf-8") as f:
        if path.lower().endswith((".jsonl", ".ndjson", ".json")):
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one object per line")
                col = text_column if isinstance(obj, dict) and text_column in obj else "text"
                if not isinstance(obj, dict) or not isinstance(obj.get(col), str):
                    raise InputError(f"{path}:{lineno}: no text in column {text_column or 'text'!r}")
                texts.append(obj[col])
                if pair_column:
                    if not isinstance(obj.get(pair_column), str):
                        raise InputError(f"{path}:{lineno}: no text pair in column {pair_column!r}")
                    pairs.append(obj[pair_column])
        else:
            texts = [line.rstrip("\n") for line in f if line.strip()]
            if pair_column:
                raise InputError(f"--input {path}: this head needs text pairs; give a .jsonl file with "
                                 f"{text_column!r} and {pair_column!r}")
    return texts, (pairs if pair_column else None)


def head_projection(head: LoadedHead, layers: list[int], device: str) -> dict[int, Any] | None:
    """The store's projection of each layer (saved beside the head), or None for an unprojected store."""
    if not head.meta["store"]["settings"].get("project"):
        return None
    import os

    from safetensors.torch import load_file

    path = os.path.join(head.run, PROJECTION)
    if not os.path.isfile(path):
        raise HeadError(f"{head.run}: {PROJECTION} is missing (the head was trained on a projected store); "
                        "re-train or re-copy the head")
    t = load_file(path)
    try:
        return {k: (t[f"L{k}.mean"].to(device), t[f"L{k}.basis"].to(device)) for k in layers}
    except KeyError as e:
        raise HeadError(f"{path} lacks {e}; re-train or re-copy the head")
