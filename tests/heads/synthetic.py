"""Synthetic stores for head tests: features written straight through featstore's layout and writer, no model.

The manifest mimics `featstore.extract` field for field (format version, fingerprint, model, tokenizer,
settings, layout, runtime, dataset, segments, files, stats, label features), so `featstore.open_store` and
`featstore.verify` accept the result.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

import numpy as np

from featstore import __version__
from featstore.extract.plan import plan_segments, storage_order
from featstore.extract.writer import SegmentJob, assemble
from featstore.store import local_backend
from featstore.store.manifest import FORMAT_VERSION, complete_manifest, fingerprint

NP_DTYPE = {"float16": np.float16, "float32": np.float32}


def write_store(path: str, splits: dict[str, dict[str, Any]], *, layers: Sequence[int], hidden: int,
                label_columns: list[dict[str, Any]], dtype: str = "float16", fmt: str = "zarr",
                label_features: dict[str, np.ndarray] | None = None, segment_tokens: int = 4096,
                model_name: str = "synthetic-encoder", num_parameters: int = 1_000_000, salt: str = "",
                encoding: str | None = None, tamper: Callable[[dict[str, np.ndarray]], None] | None = None,
                task: dict[str, Any] | None = None) -> str:
    """Write a complete store.

    splits[name] = {"features": list of (T_i, L, D) float arrays (input order), "targets": {column: array}}
    label_columns: [{"name", "kind": "class"|"regression", "names": [...] | None}]
    label_features: {column: (n_labels, L, D)} - the "backbone's" features of the label names
    task: the manifest's dataset.task of a token/span store; its splits then also carry "per_token"
      ({word_index|char_start|char_end: list of (T_i,) arrays}), "gold" (list of records) and "token_tags"
      (list of (T_i,) tag ids, -100 off first sub-words) or "spans" ((N, 2) start/end tokens)
    encoding: int8 / fp8 code the features (dtype becomes float32, as extraction records it)
    tamper: called on each segment's arrays before they are written and checksummed (a buggy writer)
    """
    layers = list(layers)
    if encoding in ("int8", "fp8"):
        dtype = "float32"
    if dtype not in NP_DTYPE:
        raise ValueError("synthetic stores support float16 and float32")
    h = hashlib.sha256(salt.encode())
    for name in sorted(splits):
        for f in splits[name]["features"]:
            h.update(np.ascontiguousarray(f, dtype=np.float32).tobytes())
    weights = h.hexdigest()
    model = {"name": model_name, "path": f"/nonexistent/{model_name}", "revision": None,
             "config": {"hidden_size": hidden, "model_type": "synthetic"}, "weights_sha256": weights,
             "num_layers": max(layers), "hidden_size": hidden, "num_parameters": num_parameters,
             "architecture": "SyntheticModel"}
    tokenizer = {"name": model["path"], "sha256": hashlib.sha256(b"tok" + salt.encode()).hexdigest(),
                 "class": "SyntheticTokenizer"}
    settings = {"layers": layers, "max_length": 512, "truncation": "longest_first", "pooling": ["cls", "mean"],
                "dtype": dtype}
    if encoding not in (None, dtype):
        settings["encoding"] = encoding
    if task is not None:
        settings["task"] = task["kind"]
    split_meta = {}
    for name, s in splits.items():
        sh = hashlib.sha256(name.encode() + weights.encode()).hexdigest()
        lengths = np.array([len(f) for f in s["features"]], dtype=np.int64)
        split_meta[name] = {"source": f"/synthetic/{name}.jsonl", "sha256": sh, "n_examples": len(lengths),
                            "n_tokens": int(lengths.sum()), "truncated": 0}
    fp = fingerprint(model, tokenizer, settings, {k: v["sha256"] for k, v in split_meta.items()})
    chunk_bytes = 1 << 20
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "tool": {"name": "featstore", "version": __version__}, "format": fmt,
        "fingerprint": fp, "complete": False, "model": model, "tokenizer": tokenizer, "settings": settings,
        "layout": {"segment_tokens": segment_tokens, "chunk_bytes": chunk_bytes, "compression": "none"},
        "runtime": {"device": "cpu", "compute_dtype": "float32", "batch_tokens": 4096},
        "dataset": {"text_column": "text", "pair_column": None, "id_column": None, "splits": split_meta,
                    "label_columns": label_columns},
    }
    if task is not None:
        manifest["dataset"]["task"] = task
    layout = local_backend(path, fmt)
    layout.create()
    layout.write_manifest(manifest)
    records, arrays = [], {}
    store_dt = NP_DTYPE[dtype]
    for name, s in splits.items():
        feats = s["features"]
        lengths = np.array([len(f) for f in feats], dtype=np.int64)
        for seg in plan_segments(name, lengths, segment_tokens):
            job = SegmentJob(name, seg.name, seg.index, layers, dtype, encoding=encoding)
            batch: dict[str, Any] = {"lengths": lengths[seg.examples], "rows": seg.examples,
                                     "ids": [f"{name}-{r}" for r in seg.examples],
                                     "input_ids": np.zeros(int(lengths[seg.examples].sum()), dtype=np.int32)}
            for key, per in s.get("per_token", {}).items():
                batch[key] = np.concatenate([per[r] for r in seg.examples]).astype(np.int32)
            for j, k in enumerate(layers):
                per = [np.asarray(feats[r][:, j], dtype=np.float32) for r in seg.examples]
                flat = np.concatenate(per).astype(store_dt)
                batch[f"L{k}/tokens"] = flat
                batch[f"L{k}/cls"] = np.stack([p[0] for p in per]).astype(store_dt)
                batch[f"L{k}/mean"] = np.stack([p.mean(0) for p in per]).astype(store_dt)
                f32 = flat.astype(np.float64)
                job.stats[k] = [float(f32.sum()), float((f32 * f32).sum()), int(f32.size)]
            job.batches.append(batch)
            seg_arrays = assemble(job)
            if tamper is not None:
                tamper(seg_arrays)
            pending = layout.write_segment(name, seg.name, seg_arrays, "none", chunk_bytes)
            record = layout.commit_segment(pending, dict(
                split=name, name=seg.name, index=seg.index, n_examples=int(len(seg_arrays["length"])),
                n_tokens=int(seg_arrays["offsets"][-1]), stats={str(k): v for k, v in job.stats.items()}))
            records.append(record)
        order = storage_order(lengths)
        for col, t in s["targets"].items():
            arrays[f"labels/{name}/{col}"] = np.asarray(t)[order]
        if "token_tags" in s:
            arrays[f"token_labels/{name}/tags"] = np.concatenate([s["token_tags"][r] for r in order]).astype(np.int32)
        if "spans" in s:
            arrays[f"spans/{name}/start"] = s["spans"][order, 0].astype(np.int32)
            arrays[f"spans/{name}/end"] = s["spans"][order, 1].astype(np.int32)
        if "gold" in s:
            blobs = [json.dumps(s["gold"][r]).encode() for r in order]
            arrays[f"gold/{name}/json_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
            arrays[f"gold/{name}/json_bytes"] = np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()
    for col, feats in (label_features or {}).items():
        for j, k in enumerate(layers):
            arrays[f"label_features/{col}/L{k}"] = np.asarray(feats[:, j], dtype=np.float32)
    manifest["files"] = layout.write_arrays(arrays, chunk_bytes)
    complete_manifest(manifest, records, layers, list(label_features or {}))
    layout.finalize(manifest)
    layout.close()
    return path


# -- planted signals ---------------------------------------------------------------------------------------

def _directions(k: int, d: int) -> np.ndarray:
    """k fixed orthonormal directions in R^d (the same in every split)."""
    q, _ = np.linalg.qr(np.random.default_rng(1234).standard_normal((d, k)))
    return q.T  # (k, d)


def planted_classification(n: int, seed: int, n_classes: int = 4, hidden: int = 16, n_layers: int = 2,
                           min_len: int = 8, max_len: int = 24, signal: float = 4.0, signal_layer: int = -1,
                           pooled: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """The label is recoverable only by attending to one token position.

    Every example holds one *marker* token (a fixed direction, the same for all classes) carrying its class
    pattern u_c, and one *decoy* token for every other class carrying u_c' without the marker. The sum over
    tokens - hence mean pooling - is marker + sum_k u_k + noise for every class: no probe on pooled vectors
    can beat chance. Attending to the marker token reads the class. The signal lives in one layer
    (`signal_layer`, default the last); the other layers are pure noise, so the layer mix has something to learn.

    `pooled=True` is the control: every token carries its class pattern, so mean pooling shows the class.
    """
    rng = np.random.default_rng(seed)
    dirs = _directions(n_classes + 1, hidden)
    u, marker = dirs[:n_classes] * signal, dirs[n_classes] * signal
    feats, y = [], rng.integers(0, n_classes, n)
    for c in y:
        T = int(rng.integers(max(min_len, n_classes + 1), max_len + 1))
        x = rng.standard_normal((T, n_layers, hidden)).astype(np.float32)  # (T, L, D)
        if pooled:
            x[:, signal_layer] += u[c] / 2
            feats.append(x)
            continue
        pos = rng.choice(T, n_classes, replace=False)
        x[pos[0], signal_layer] += marker + u[c]
        others = [k for k in range(n_classes) if k != c]
        for p, k in zip(pos[1:], others):
            x[p, signal_layer] += u[k]
        feats.append(x)
    return feats, y.astype(np.int64)


def planted_regression(n: int, seed: int, hidden: int = 16, n_layers: int = 2, min_len: int = 8,
                       max_len: int = 24, signal: float = 8.0, amplitude: float = 3.0) -> tuple[list[np.ndarray], np.ndarray]:
    """Target = a fixed linear function of one token's (last-layer) features: the marker token's.

    The marker direction is strong so that the token's norm, and hence what LayerNorm divides by, barely
    varies with the target; pooled vectors carry the target only diluted by the sequence length.
    """
    rng = np.random.default_rng(seed)
    dirs = _directions(2, hidden)
    marker, w = dirs[0] * signal, dirs[1]
    feats, y = [], []
    for _ in range(n):
        T = int(rng.integers(min_len, max_len + 1))
        x = rng.standard_normal((T, n_layers, hidden)).astype(np.float32)  # (T, L, D)
        p = int(rng.integers(T))
        x[p, -1] += marker + float(rng.uniform(-1.0, 1.0)) * amplitude * w
        feats.append(x)
        y.append(2.0 + float(x[p, -1] @ w))
    return feats, np.asarray(y, dtype=np.float32)


def classification_store(path: str, *, n_train: int = 600, n_dev: int = 150, n_test: int = 200, splits=None,
                         fmt: str = "zarr", names=("alpha", "beta", "gamma", "delta"), layers=(1, 2),
                         encoding: str | None = None, tamper: Callable[[dict[str, np.ndarray]], None] | None = None,
                         **kw: Any) -> str:
    hidden, n_classes = kw.pop("hidden", 16), len(names)
    sizes = {"train": n_train, "validation": n_dev, "test": n_test}
    if splits is not None:
        sizes = {k: v for k, v in sizes.items() if k in splits}
    data = {}
    for i, (name, n) in enumerate(sizes.items()):
        feats, y = planted_classification(n, seed=100 + i, n_classes=n_classes, hidden=hidden,
                                          n_layers=len(layers), **kw)
        data[name] = {"features": feats, "targets": {"label": y}}
    prior = np.random.default_rng(7).standard_normal((n_classes, len(layers), hidden)).astype(np.float32)
    return write_store(path, data, layers=list(layers), hidden=hidden, fmt=fmt,
                       label_columns=[{"name": "label", "kind": "class", "names": list(names)}],
                       label_features={"label": prior}, segment_tokens=2048, encoding=encoding,
                       tamper=tamper)


STARS = ["10", "20", "30", "40", "50"]  # class i of `stars` stands for the value 10 * (i + 1)


def regression_store(path: str, *, n_train: int = 600, n_dev: int = 150, n_test: int = 200, **kw: Any) -> str:
    hidden = kw.pop("hidden", 16)
    data = {}
    for i, (name, n) in enumerate({"train": n_train, "validation": n_dev, "test": n_test}.items()):
        feats, y = planted_regression(n, seed=200 + i, hidden=hidden, **kw)
        stars = np.clip(np.round(y).astype(np.int64), 0, 4)  # a class column whose names are numbers (not its ids)
        data[name] = {"features": feats, "targets": {"score": y, "word": (y > 2.0).astype(np.int64), "stars": stars}}
    return write_store(path, data, layers=[1, 2], hidden=hidden,
                       label_columns=[{"name": "score", "kind": "regression", "names": None},
                                      {"name": "word", "kind": "class", "names": ["low", "high"]},
                                      {"name": "stars", "kind": "class", "names": STARS}],
                       segment_tokens=2048)


# -- token and span tasks ----------------------------------------------------------------------------------

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _random_bio(rng: np.random.Generator, n_words: int) -> list[str]:
    tags, i = [], 0
    while i < n_words:
        if rng.random() < 0.35:
            kind, span = ("PER", "LOC")[int(rng.integers(2))], int(rng.integers(1, 4))
            for j in range(min(span, n_words - i)):
                tags.append(("B-" if j == 0 else "I-") + kind)
            i += span
        else:
            tags.append("O")
            i += 1
    return tags[:n_words]


def planted_tokens(n: int, seed: int, hidden: int = 16, n_layers: int = 2, signal: float = 6.0) -> dict[str, Any]:
    """Each word's tag is a direction in its *first* sub-word's features (later sub-words: noise only), so
    only a head that reads every token recovers the entities; pooled vectors mix them all."""
    rng = np.random.default_rng(seed)
    u = _directions(len(TAGS), hidden) * signal
    out: dict[str, Any] = {"features": [], "targets": {}, "token_tags": [], "gold": [],
                           "per_token": {"word_index": [], "char_start": [], "char_end": []}}
    for _ in range(n):
        n_words = int(rng.integers(3, 12))
        tags = _random_bio(rng, n_words)
        words = [f"w{int(rng.integers(100))}" for _ in range(n_words)]
        wi, cs, ce, tt, rows = [-1], [-1], [-1], [-100], [np.zeros(hidden)]  # [CLS]
        pos = 0
        for w, (word, tag) in enumerate(zip(words, tags)):
            pieces = int(rng.integers(1, 3))
            cut = [0, len(word) // 2, len(word)] if pieces == 2 else [0, len(word)]
            for p in range(pieces):
                wi.append(w)
                cs.append(pos + cut[p])
                ce.append(pos + cut[p + 1])
                tt.append(TAGS.index(tag) if p == 0 else -100)
                rows.append(u[TAGS.index(tag)] if p == 0 else np.zeros(hidden))
            pos += len(word) + 1
        T = len(rows)
        x = rng.standard_normal((T, n_layers, hidden)).astype(np.float32)  # (T, L, D)
        x[:, -1] += np.stack(rows).astype(np.float32)
        out["features"].append(x)
        out["token_tags"].append(np.asarray(tt))
        out["gold"].append({"words": words, "tags": tags})
        for k, v in (("word_index", wi), ("char_start", cs), ("char_end", ce)):
            out["per_token"][k].append(np.asarray(v))
    return out


def planted_spans(n: int, seed: int, hidden: int = 16, n_layers: int = 2, signal: float = 6.0,
                  unanswerable: float = 0.0) -> dict[str, Any]:
    """[CLS] question tokens, then context words (one token each); the answer's first and last tokens carry a
    start and an end direction. Unanswerable questions (a fraction) mark [CLS] with both instead."""
    rng = np.random.default_rng(seed)
    u_s, u_e = _directions(2, hidden) * signal
    out: dict[str, Any] = {"features": [], "targets": {}, "spans": [], "gold": [],
                           "per_token": {"word_index": [], "char_start": [], "char_end": []}}
    for _ in range(n):
        n_q, n_c = int(rng.integers(2, 5)), int(rng.integers(5, 20))
        words = [f"c{int(rng.integers(1000))}" for _ in range(n_c)]
        context = " ".join(words)
        starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
        T = 1 + n_q + 1 + n_c
        wi, cs, ce = np.full(T, -1), np.full(T, -1), np.full(T, -1)
        base = n_q + 2
        wi[base:] = np.arange(n_c)
        cs[base:] = starts
        ce[base:] = starts + np.array([len(w) for w in words])
        x = rng.standard_normal((T, n_layers, hidden)).astype(np.float32)  # (T, L, D)
        if rng.random() < unanswerable:
            s = e = 0
            answers: list[str] = []
        else:
            a = int(rng.integers(n_c))
            b = min(n_c - 1, a + int(rng.integers(0, 4)))
            s, e = base + a, base + b
            answers = [context[cs[s]:ce[e]]]
        x[s, -1] += u_s
        x[e, -1] += u_e
        out["features"].append(x)
        out["spans"].append((s, e))
        out["gold"].append({"context": context, "question": "q", "answers": answers})
        for k, v in (("word_index", wi), ("char_start", cs), ("char_end", ce)):
            out["per_token"][k].append(v)
    out["spans"] = np.asarray(out["spans"], dtype=np.int64)
    return out


def token_store(path: str, *, n_train: int = 400, n_dev: int = 100, n_test: int = 150, hidden: int = 16,
                **kw: Any) -> str:
    data = {name: planted_tokens(n, seed=300 + i, hidden=hidden, **kw)
            for i, (name, n) in enumerate({"train": n_train, "validation": n_dev, "test": n_test}.items())}
    task = {"kind": "token", "scheme": "IOB2", "tag_names": TAGS, "repaired": 0,
            "splits": {k: {"truncated_words": 0} for k in data}}
    return write_store(path, data, layers=[1, 2], hidden=hidden, label_columns=[], segment_tokens=2048, task=task)


def span_store(path: str, *, n_train: int = 400, n_dev: int = 100, n_test: int = 150, hidden: int = 16,
               unanswerable: float = 0.0, **kw: Any) -> str:
    data = {name: planted_spans(n, seed=400 + i, hidden=hidden, unanswerable=unanswerable, **kw)
            for i, (name, n) in enumerate({"train": n_train, "validation": n_dev, "test": n_test}.items())}
    task = {"kind": "span", "splits": {k: {"answers_lost": 0, "unanswerable": sum(not g["answers"] for g in v["gold"])}
                                       for k, v in data.items()}}
    return write_store(path, data, layers=[1, 2], hidden=hidden, label_columns=[], segment_tokens=2048, task=task)


# -- multi-label -------------------------------------------------------------------------------------------

TOPICS = ["animal", "colour", "finance"]


def planted_multilabel(n: int, seed: int, hidden: int = 16, n_layers: int = 2, signal: float = 3.0
                       ) -> tuple[list[np.ndarray], np.ndarray]:
    """Each label is on with probability 0.4, independently (so some examples have none, some several); every
    token carries the directions of the example's labels, so pooled vectors show them as well as tokens."""
    rng = np.random.default_rng(seed)
    u = _directions(len(TOPICS), hidden) * signal
    y = (rng.random((n, len(TOPICS))) < 0.4).astype(np.uint8)
    feats = []
    for labels in y:
        x = rng.standard_normal((int(rng.integers(4, 12)), n_layers, hidden)).astype(np.float32)  # (T, L, D)
        x[:, -1] += labels @ u
        feats.append(x)
    return feats, y


def multilabel_store(path: str, *, n_train: int = 300, n_dev: int = 100, n_test: int = 100, hidden: int = 16) -> str:
    data = {}
    for i, (name, n) in enumerate({"train": n_train, "validation": n_dev, "test": n_test}.items()):
        feats, y = planted_multilabel(n, seed=500 + i, hidden=hidden)
        data[name] = {"features": feats, "targets": {"topics": y}}
    prior = np.random.default_rng(8).standard_normal((len(TOPICS), 2, hidden)).astype(np.float32)
    return write_store(path, data, layers=[1, 2], hidden=hidden, segment_tokens=2048,
                       label_columns=[{"name": "topics", "kind": "multilabel", "names": TOPICS}],
                       label_features={"topics": prior})
