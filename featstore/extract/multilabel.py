"""Multi-label targets: several labels per example, stored as a (N, K) 0/1 array with the K label names.

Two ways to give them, for `featstore extract` and `featstore add-labels`:

    --label-column tags                 a column holding a list of label names per row (JSONL, Parquet, HF
                                        datasets); auto-detected, or forced with tags:multilabel, where a CSV
                                        cell holds the names separated by `|` (an empty cell: no label)
    --label-column topics=sport,tech    several 0/1 columns named together into one column `topics`, whose
                                        label names are the source columns, in the order given
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import InputError

SEPARATOR = "|"


def is_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) or (hasattr(v, "tolist") and getattr(v, "ndim", 0) == 1)


def binary_columns(cols: dict[str, list[Any]], sources: Sequence[str], split: str, path: str) -> list[list[str]]:
    """Rows of several 0/1 columns -> per row, the names of the columns that are 1."""
    missing = [c for c in sources if c not in cols]
    if missing:
        raise InputError(f"split {split!r} ({path}): label column(s) {missing} not found; columns are {sorted(cols)}")
    out: list[list[str]] = [[] for _ in cols[sources[0]]]
    for c in sources:
        for i, v in enumerate(cols[c]):
            flag = _flag(v)
            if flag is None:
                raise InputError(f"split {split!r} ({path}) row {i}: column {c!r} is {v!r}; columns named together "
                                 "into a multi-label column must hold 0 or 1 (or true/false)")
            if flag:
                out[i].append(c)
    return out


def _flag(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("0", "1", "true", "false", "0.0", "1.0"):
        return v.strip().lower() in ("1", "true", "1.0")
    return None


def row_labels(v: Any, col: str, where: str) -> list[str]:
    """One row's label names: a list, or `a|b` text (CSV); None is a missing row, an empty list none."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise InputError(f"{where}: labels {col!r} are missing; give a list (empty for none) on every row")
    if is_list(v):
        items = list(v.tolist() if hasattr(v, "tolist") else v)
    elif isinstance(v, str):
        items = [s for s in v.split(SEPARATOR) if s.strip()]
    else:
        raise InputError(f"{where}: labels {col!r} are {type(v).__name__}, not a list of label names")
    names = []
    for x in items:
        if not isinstance(x, (str, int)) or isinstance(x, bool):
            raise InputError(f"{where}: label {x!r} in column {col!r} is not a name")
        names.append(str(x).strip())
    return names


def encode_multilabel(col: str, splits: dict[str, Any], names: list[str] | None = None) -> list[str]:
    """Set each split's targets[col] to (N, K) uint8; returns the K label names (the training split's, sorted,
    unless `names` fixes them)."""
    rows = {s.name: [row_labels(v, col, f"split {s.name!r} ({s.source}) row {i}")
                     for i, v in enumerate(s.raw_labels[col])] for s in splits.values()}
    if names is None:
        vocab_splits = [rows["train"]] if "train" in rows else list(rows.values())
        names = sorted({n for r in vocab_splits for labels in r for n in labels})
    if not names:
        raise InputError(f"multi-label column {col!r} has no label on any training row; nothing to learn")
    index = {n: i for i, n in enumerate(names)}
    for s in splits.values():
        y = np.zeros((len(rows[s.name]), len(names)), dtype=np.uint8)
        for i, labels in enumerate(rows[s.name]):
            for n in labels:
                if n not in index:
                    raise InputError(f"split {s.name!r} row {i}: label {n!r} in column {col!r} does not occur in the "
                                     "training split; fix the label or add training examples for it")
                y[i, index[n]] = 1
        s.targets[col] = y
    return list(names)
