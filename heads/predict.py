"""`heads predict`: raw text -> backbone features (the store's settings) -> head -> label and probabilities.

The only module of `heads` that loads a backbone (and so imports `transformers`, lazily, through
featstore.models). Extraction reuses featstore's own tokenizer call and forward pass, so a text that is in
the store gets the same features here (up to the store dtype's rounding) as it got at extraction.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from featstore.device import pick_device
from featstore.extract.inputs import SplitData
from featstore.store.encoding import from_stored

from .artifacts import LoadedHead, load_head
from .data import ArrayTokens, Loader, PooledSource
from .errors import HeadError, InputError
from .task import batch_dtype, infer


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


def extract_features(head: LoadedHead, lm: Any, texts: Sequence[str], pairs: Sequence[str] | None,
                     batch_size: int, device: str) -> tuple[Any, np.ndarray]:
    """Features of raw texts exactly as `featstore extract` stores them; returns (source, order).

    `order[j]` is the input index of the j-th example of the source (length-sorted, like a store).
    """
    import torch

    from featstore.extract.forward import forward_batch
    from featstore.extract.models import truncate_after
    from featstore.extract.plan import storage_order, tokenize

    bb = head.meta["backbone"]
    settings = bb["settings"]
    split = SplitData("predict", "<predict>", list(texts), list(pairs) if pairs is not None else None,
                      [f"text-{i}" for i in range(len(texts))])
    tok = tokenize(lm.tokenizer, split, settings["max_length"], settings["truncation"])
    layers = head.layers
    if max(layers) > lm.num_layers:
        raise HeadError(f"head {head.run} reads layer {max(layers)}, but its backbone has {lm.num_layers} layers; "
                        "the head does not belong to this backbone")
    truncate_after(lm.model, max(layers))
    runtime = bb.get("runtime") or {}
    compute = runtime.get("compute_dtype", "float32") if device.startswith("cuda") else "float32"
    lm.model.to(device=device, dtype=getattr(torch, compute))
    order = storage_order(tok.lengths)
    dtype = settings["dtype"]
    parts: list[dict[str, np.ndarray]] = []
    projection = head_projection(head, layers, device)
    for a in range(0, len(order), batch_size):
        parts.append(forward_batch(lm, tok, split, order[a:a + batch_size], layers, dtype, device, {}, projection))
    if head.spec.kind == "ytuning" or "top_layers" in head.meta:  # tuned top layers run on tokens
        flat = np.stack([from_stored(np.concatenate([p[f"L{k}/tokens"] for p in parts]), dtype) for k in layers],
                        axis=1)  # (N_tokens, L, D)
        return ArrayTokens(flat, tok.lengths[order]), order
    kind = head.spec.pooling
    x = np.stack([from_stored(np.concatenate([p[f"L{k}/{kind}"] for p in parts]), dtype) for k in layers], axis=1)
    return PooledSource(x), order  # (N, L, D)


def predict(run: str, texts: Sequence[str], pairs: Sequence[str] | None = None, *, seed: int | None = None,
            model: str | None = None, batch_size: int = 32, device: str = "auto",
            verify_backbone: bool = True) -> list[dict[str, Any]]:
    """Label and probabilities (or a value, for regression) for each raw text, in input order."""
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
    if head.spec.task in ("token", "span"):  # texts are sentences, or contexts with `pairs` their questions
        from .seqpredict import predict_seq

        return predict_seq(head, load_backbone(head, model, verify_backbone), texts, pairs, batch_size, dev)
    pair_column = head.meta["backbone"].get("pair_column")
    if pair_column and pairs is None:
        raise InputError(f"head {run} was trained on text pairs ({pair_column!r}); give a --text-pair for every --text")
    if not pair_column and pairs is not None:
        raise InputError(f"head {run} was trained on single texts; drop the text pairs")
    if pairs is not None and len(pairs) != len(texts):
        raise InputError(f"{len(texts)} texts but {len(pairs)} text pairs; give one pair per text")
    lm = load_backbone(head, model, verify_backbone)
    source, order = extract_features(head, lm, texts, pairs, batch_size, str(dev))
    loader = Loader(source, None, batch_size, shuffle=False, dtype=batch_dtype(dev, head.meta["store"]["dtype"]))
    out_sorted = infer(head.model, head.spec, loader, dev)
    out = np.empty_like(out_sorted)
    out[order] = out_sorted
    names = head.label_names
    recs = []
    for i, t in enumerate(texts):
        r: dict[str, Any] = {"text": t}
        if pairs is not None:
            r["pair"] = pairs[i]
        if head.spec.task == "classification":
            r["label"] = names[int(out[i].argmax())]
            r["probabilities"] = {n: float(p) for n, p in zip(names, out[i])}
        else:
            r["prediction"] = float(out[i])
        recs.append(r)
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

    from .artifacts import PROJECTION

    path = os.path.join(head.run, PROJECTION)
    if not os.path.isfile(path):
        raise HeadError(f"{head.run}: {PROJECTION} is missing (the head was trained on a projected store); "
                        "re-train or re-copy the head")
    t = load_file(path)
    try:
        return {k: (t[f"L{k}.mean"].to(device), t[f"L{k}.basis"].to(device)) for k in layers}
    except KeyError as e:
        raise HeadError(f"{path} lacks {e}; re-train or re-copy the head")
