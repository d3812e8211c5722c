"""`featstore add-labels`: attach a new label column to a local store, joined by example id, no re-extraction.

Labels are not part of the fingerprint (the features do not depend on them), so a teammate's new annotations
on a shared corpus become a new column of the same store: `labels/<split>/<column>` in storage order, listed in
the manifest's `dataset.label_columns` and checksummed in its `files`. The manifest is replaced atomically,
after the arrays are written, so a crash leaves the store as it was.

A published store is immutable: to label one, pull it, add labels, and push the result under a new name.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError, StoreError
from .extract.inputs import SplitData, encode_labels, parse_label_spec, read_table
from .extract.multilabel import binary_columns
from .io.transport import is_url
from .store import Store, open_store
from .store.manifest import safe_name


@dataclass(kw_only=True)
class AddLabelsResult:
    store: str
    column: str
    kind: str
    names: list[str] | None
    examples: dict[str, int]
    fingerprint: str
    unseen: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> split -> count; absent from train


def add_labels(store_path: str, data: dict[str, str], label_column: str, id_column: str = "id",
               strict_labels: bool = False) -> AddLabelsResult:
    """Join `label_column` of the files in `data` (split -> path) to the store's examples by `id_column`.

    `label_column` is `NAME`, `NAME:class`, `NAME:regression`, `NAME:multilabel` (a list of label names per
    row) or `NAME=COL1,COL2,...` (0/1 columns named together into a multi-label column). Every split of the
    store needs a file; every example needs exactly one label (list) and every id in the files must exist in
    the store, else nothing changes.
    A class (or tag) absent from the training split is kept and counted in `unseen`; `strict_labels` refuses it.
    """
    if is_url(store_path):
        raise InputError(f"{store_path} is a published store and immutable: pull it (`featstore pull`), add labels "
                         "to the copy, and push that under a new name")
    column, kind, sources = parse_label_spec(label_column)
    if not _safe(column):
        raise InputError(f"--label-column {column!r}: use letters, digits, _ . - only")
    store = open_store(store_path)
    try:
        if column in store.label_columns:
            raise InputError(f"store {store_path} already has label column {column!r}; choose another name "
                             "(published columns are never replaced)")
        missing = [s for s in store.splits if s not in data]
        unknown = [s for s in data if s not in store.splits]
        if unknown:
            raise InputError(f"--data for split(s) {', '.join(unknown)} that the store does not have; "
                             f"its splits are {', '.join(store.splits)}")
        if missing:
            raise InputError(f"--data missing for split(s) {', '.join(missing)}: every split of the store needs "
                             "its labels (give --data SPLIT=PATH for each)")
        splits = {name: _join(store, name, data[name], id_column, column, sources) for name in store.splits}
        if store.task == "token":  # a tag per word, aligned through the stored word index
            from .token_labels import add_token_labels

            entry = add_token_labels(store, splits, column, id_column, data, strict_labels)
            return AddLabelsResult(store=store_path, column=column, kind="token", names=entry["tag_names"],
                                   examples={k: len(s.ids) for k, s in splits.items()}, fingerprint=store.fingerprint,
                                   unseen=entry.get("unseen_in_train", {}))
        if store.task != "sentence":
            raise InputError(f"store {store_path} holds a {store.task} task; add-labels adds sentence labels or "
                             "token tags")
        col = encode_labels(column, kind, splits, sources, strict_labels)  # same vocabulary rules as extraction
        arrays = {f"labels/{name}/{column}": s.targets[column] for name, s in splits.items()}
        entry = {**col.to_json(), "added": {"id_column": id_column, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime()),
                                            "sources": {k: os.path.abspath(v) for k, v in data.items()}}}
        manifest = store.manifest
        fingerprint = store.fingerprint
        manifest["dataset"]["label_columns"].append(entry)
        store.backend.writable().add_arrays(arrays, manifest)  # the manifest last: a crash leaves the store as it was
    finally:
        store.close()
    return AddLabelsResult(store=store_path, column=column, kind=col.kind, names=col.names,
                           examples={k: len(s.ids) for k, s in splits.items()}, fingerprint=fingerprint,
                           unseen=col.unseen)


def _safe(name: str) -> bool:
    try:
        safe_name(name, "label column")
        return True
    except StoreError:
        return False


def _join(store: Store, split: str, path: str, id_column: str, column: str,
          sources: list[str] | None = None) -> SplitData:
    """The file's labels in the store's storage order; every mismatch reported at once. `sources`: 0/1 columns
    named together into the multi-label `column`."""
    cols = read_table(path)
    if sources:
        cols[column] = binary_columns(cols, sources, split, path)
    for c in (id_column, column):
        if c not in cols:
            raise InputError(f"split {split!r} ({path}): column {c!r} not found; columns are {sorted(cols)}")
    ids = [None if v is None else str(v) for v in cols[id_column]]
    by_id: dict[str, Any] = {}
    dupes: list[str] = []
    for i, v in enumerate(ids):
        if v is None:
            raise InputError(f"split {split!r} ({path}) row {i}: id is null")
        if v in by_id:
            dupes.append(v)
        by_id[v] = cols[column][i]
    sp = store.split(split)
    store_ids = sp.example_ids  # storage order
    known = set(store_ids)
    unmatched = [v for v in by_id if v not in known]
    unlabelled = [v for v in store_ids if v not in by_id]
    problems = []
    if dupes:
        problems.append(f"{len(set(dupes))} duplicate id(s) {_some(sorted(set(dupes)))}")
    if unmatched:
        problems.append(f"{len(unmatched)} id(s) not in the store {_some(unmatched)}")
    if unlabelled:
        problems.append(f"{len(unlabelled)} example(s) of the store without a label {_some(unlabelled)}")
    if problems:
        raise InputError(f"split {split!r} ({path}), joined on {id_column!r}: {'; '.join(problems)}; "
                         "fix the file (ids must match the store's example ids one to one); nothing was changed")
    return SplitData(split, path, texts=[], pairs=None, ids=store_ids,
                     raw_labels={column: [by_id[i] for i in store_ids]})


def _some(values: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(v) for v in values[:n])
    return f"({shown}{', ...' if len(values) > n else ''})"
