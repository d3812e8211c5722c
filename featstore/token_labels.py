"""`featstore add-labels` on a token store: a new tag column (e.g. POS beside NER) joined by example id.

The file gives, per example id, a list with one tag per word of the stored example. Tags are validated like at
extraction (scheme detected, an I- without its B- refused), aligned to each word's first sub-word through the
stored word index (-100 elsewhere), and written as `token_labels/<split>/<column>` plus the word-level gold
tags for scoring, `gold_tags/<split>/<column>/json_*`. The manifest, replaced last, lists the column under
`dataset.task.tag_columns`; the fingerprint does not change (features do not depend on labels).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from .errors import InputError
from .extract.inputs import vocabulary
from .extract.tasks import tag_order
from .store import Store
from .tagging import detect_scheme, invalid_tags


def add_token_labels(store: Store, splits: dict[str, Any], column: str, id_column: str,
                     data: dict[str, str], strict: bool = False) -> dict[str, Any]:
    """`splits`: split -> SplitData from `labels._join` (raw tag lists in storage order). Returns the entry.
    Tags absent from the training split are kept and counted (`unseen_in_train`), or refused when `strict`."""
    if column == "tags" or column in store.task_info.get("tag_columns", {}):
        raise InputError(f"store {store.path} already has tag column {column!r}; choose another name")
    golds = {name: store.split(name).gold() for name in splits}
    for name, s in splits.items():
        for i, (tags, g) in enumerate(zip(s.raw_labels[column], golds[name])):
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise InputError(f"split {name!r} ({data[name]}) id {s.ids[i]!r}: {column!r} must be a list of tags")
            if len(tags) != len(g["words"]):
                raise InputError(f"split {name!r} ({data[name]}) id {s.ids[i]!r}: {len(tags)} tags for "
                                 f"{len(g['words'])} words; give one tag per word")
    scheme = detect_scheme([t for s in splits.values() for t in s.raw_labels[column]])
    for name, s in splits.items():
        for i, tags in enumerate(s.raw_labels[column]):
            bad = invalid_tags(tags, scheme)
            if bad:
                raise InputError(f"split {name!r} ({data[name]}) id {s.ids[i]!r} word {bad[0]}: tag "
                                 f"{tags[bad[0]]!r} continues an entity that never started ({scheme}); fix the file")
    names, unseen = vocabulary({n: s.raw_labels[column] for n, s in splits.items()}, tag_order, strict, "tag",
                               lambda split, i: f"split {split!r} ({data[split]}) id {splits[split].ids[i]!r}")
    index = {n: i for i, n in enumerate(names)}
    arrays: dict[str, np.ndarray] = {}
    for name, s in splits.items():
        sp = store.split(name)
        words, off = sp.token_array("word_index"), sp.offsets
        out = np.full(sp.n_tokens, -100, dtype=np.int32)
        for i, tags in enumerate(s.raw_labels[column]):
            w = words[off[i]:off[i + 1]]
            first = np.flatnonzero((w >= 0) & np.r_[True, w[1:] != w[:-1]])  # first sub-word of each word
            out[off[i] + first] = [index[tags[k]] for k in w[first]]
        blobs = [json.dumps(tags).encode() for tags in s.raw_labels[column]]
        arrays[f"token_labels/{name}/{column}"] = out
        arrays[f"gold_tags/{name}/{column}/json_bytes"] = np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()
        arrays[f"gold_tags/{name}/{column}/json_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    entry = {"tag_names": names, "scheme": scheme,
             "added": {"id_column": id_column, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "sources": {k: os.path.abspath(v) for k, v in data.items()}}}
    if unseen:
        entry["unseen_in_train"] = unseen
    manifest = store.manifest
    manifest["dataset"]["task"].setdefault("tag_columns", {})[column] = entry
    store.backend.writable().add_arrays(arrays, manifest)  # the manifest last: a crash leaves the store as it was
    return entry
