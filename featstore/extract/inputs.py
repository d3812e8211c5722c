"""Read input splits (CSV, JSONL, Parquet, HF `datasets` directories), validate them, build label vocabularies."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from .multilabel import binary_columns, encode_multilabel, is_list

LABEL_KINDS = ("auto", "class", "regression", "multilabel")


@dataclass
class LabelColumn:
    """A target column: `class` columns carry a vocabulary, `regression` columns float targets, `multilabel`
    columns a (N, K) 0/1 array and its K label names."""

    name: str
    kind: str  # "class" | "regression" | "multilabel"
    names: list[str] | None = None  # vocabulary for class and multilabel columns, index = target id
    unseen: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> split -> rows; absent from train

    def to_json(self) -> dict[str, Any]:
        d = {"name": self.name, "kind": self.kind, "names": self.names}
        if self.unseen:  # stores without such classes keep the manifest they always had
            d["unseen_in_train"] = self.unseen
        return d


@dataclass
class SplitData:
    name: str
    source: str
    texts: list[str]
    pairs: list[str] | None
    ids: list[str]
    raw_labels: dict[str, list[Any]] = field(default_factory=dict)
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # input order
    extra: dict[str, list[Any]] = field(default_factory=dict)  # token/span tasks (featstore.extract.tasks)

    def __len__(self) -> int:
        return len(self.texts)

    def content_hash(self) -> str:
        """Hash of what determines the features: ids and texts, in input order (labels excluded)."""
        h = hashlib.sha256()
        words = self.extra.get("words")
        for i, t in enumerate(self.texts):
            rec = [self.ids[i], t, self.pairs[i] if self.pairs is not None else None]
            if words is not None:  # token tasks: the word boundaries fix the alignment
                rec.append(words[i])
            h.update(json.dumps(rec, ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()


@dataclass
class Dataset:
    splits: dict[str, SplitData]
    label_columns: list[LabelColumn]
    text_column: str
    pair_column: str | None
    id_column: str | None


def parse_label_spec(spec: str) -> tuple[str, str, list[str] | None]:
    """`label` -> ("label", "auto", None); `score:regression` -> ("score", "regression", None);
    `topics=sport,tech` -> ("topics", "multilabel", ["sport", "tech"]): 0/1 columns named together."""
    if "=" in spec:
        name, _, cols = spec.partition("=")
        sources = [c.strip() for c in cols.split(",") if c.strip()]
        if not name or not sources or len(set(sources)) != len(sources):
            raise InputError(f"bad label column {spec!r}: use NAME=COL1,COL2,... to name 0/1 columns together "
                             "(each column once)")
        return name, "multilabel", sources
    name, _, kind = spec.partition(":")
    kind = kind or "auto"
    if not name or kind not in LABEL_KINDS:
        raise InputError(f"bad label column {spec!r}: use NAME, NAME:class, NAME:regression, NAME:multilabel or "
                         "NAME=COL1,COL2,...")
    return name, kind, None


def parse_split_specs(specs: list[str]) -> dict[str, str]:
    """`train=data/train.csv` pairs -> {split: path}. A bare path to a saved DatasetDict yields all its splits."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            for split, sub in _dataset_dict_splits(spec).items():
                out[split] = sub
            continue
        if not name or not path:
            raise InputError(f"bad --data {spec!r}: use SPLIT=PATH, e.g. --data train=data/train.csv")
        if name in out:
            raise InputError(f"split {name!r} given twice in --data")
        out[name] = path
    if not out:
        raise InputError("no input: give at least one --data SPLIT=PATH")
    return out


def _dataset_dict_splits(path: str) -> dict[str, str]:
    meta = os.path.join(path, "dataset_dict.json")
    if not os.path.isfile(meta):
        raise InputError(f"bad --data {path!r}: use SPLIT=PATH (or a directory saved by DatasetDict.save_to_disk)")
    try:
        with open(meta, encoding="utf-8") as f:
            splits = json.load(f)["splits"]
        if not isinstance(splits, list) or not all(isinstance(x, str) and x for x in splits):
            raise TypeError("splits is not a list of names")
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{meta} is damaged ({type(e).__name__}); re-save the DatasetDict, or pass SPLIT=PATH")
    return {s: os.path.join(path, s) for s in splits}


def read_table(path: str) -> dict[str, list[Any]]:
    """Read one split file into columns. Formats by extension; a directory is an HF `datasets` save."""
    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    if os.path.isdir(path):
        return _read_hf_dir(path)
    ext = path.lower().rsplit(".", 1)[-1]
    try:
        if ext in ("csv", "tsv"):
            return _read_csv(path, "\t" if ext == "tsv" else ",")
        if ext in ("jsonl", "json", "ndjson"):
            return _read_jsonl(path)
        if ext in ("parquet", "pq"):
            import pyarrow
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pydict()
            except pyarrow.ArrowException as e:
                raise InputError(f"{path} is not a readable Parquet file ({str(e)[:100]})")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8")
    except csv.Error as e:
        raise InputError(f"{path} is not a readable CSV file ({e})")
    raise InputError(f"unsupported input format {path!r}: use .csv, .tsv, .jsonl, .parquet or a datasets directory")


def _read_csv(path: str, delimiter: str) -> dict[str, list[Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        cols: dict[str, list[Any]] = {c: [] for c in reader.fieldnames or []}
        for row in reader:
            for c in cols:
                cols[c].append(row.get(c))
    return cols


def _read_jsonl(path: str) -> dict[str, list[Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one object per line")
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{lineno}: a JSON {type(row).__name__}, not an object; expected one "
                                     'object per line, e.g. {"text": "...", "label": "..."}')
                rows.append(row)
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    return {k: [r.get(k) for r in rows] for k in keys}


def _read_hf_dir(path: str) -> dict[str, list[Any]]:
    try:
        import datasets
    except ImportError:
        raise InputError(f"{path} is a directory: reading HF datasets needs `pip install datasets`")
    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a dataset directory"
        raise InputError(f"{path} is not a directory saved by datasets' save_to_disk ({type(e).__name__})")
    if isinstance(ds, datasets.DatasetDict):
        raise InputError(f"{path} holds several splits: pass --data {path} (no SPLIT=) or SPLIT={path}/<split>")
    return ds.to_dict()


def _text_column(cols: dict[str, list[Any]], column: str, split: str, path: str, allow_empty: bool) -> list[str]:
    if column not in cols:
        raise InputError(f"split {split!r} ({path}): column {column!r} not found; columns are {sorted(cols)}")
    values = cols[column]
    for i, v in enumerate(values):
        if not isinstance(v, str):
            kind = "null" if v is None else type(v).__name__
            raise InputError(f"split {split!r} ({path}) row {i}: column {column!r} is {kind}, not text; "
                             "clean or drop that row")
        if not allow_empty and not v.strip():
            # an empty text gets features of the special tokens alone: almost always a data bug
            raise InputError(f"split {split!r} ({path}) row {i}: column {column!r} is empty; clean or drop that "
                             "row, or pass --allow-empty-text to keep empty texts")
    return values


def load_dataset(
    data: dict[str, str],
    text_column: str,
    pair_column: str | None = None,
    label_columns: list[str] | None = None,
    id_column: str | None = None,
    allow_empty_text: bool = False,
    strict_labels: bool = False,
) -> Dataset:
    """Read and validate every split; encode targets. Raises InputError before any model work starts."""
    label_specs = [parse_label_spec(s) for s in (label_columns or [])]
    splits: dict[str, SplitData] = {}
    for name, path in data.items():
        cols = read_table(path)
        texts = _text_column(cols, text_column, name, path, allow_empty_text)
        if not texts:
            raise InputError(f"split {name!r} ({path}) is empty: give a file with at least one row")
        pairs = _text_column(cols, pair_column, name, path, allow_empty_text) if pair_column else None
        if id_column:
            if id_column not in cols:
                raise InputError(f"split {name!r} ({path}): id column {id_column!r} not found; columns are {sorted(cols)}")
            ids = [str(v) for v in cols[id_column]]
            seen: set[str] = set()
            for i, v in enumerate(ids):
                if cols[id_column][i] is None:
                    raise InputError(f"split {name!r} ({path}) row {i}: id is null")
                if v in seen:
                    raise InputError(f"split {name!r} ({path}) row {i}: duplicate id {v!r}; ids must be unique")
                seen.add(v)
        else:
            ids = [f"{name}-{i}" for i in range(len(texts))]
        raw = {}
        for col, _, sources in label_specs:
            if sources:
                cols[col] = binary_columns(cols, sources, name, path)
            if col not in cols:
                raise InputError(f"split {name!r} ({path}): label column {col!r} not found; columns are {sorted(cols)}")
            raw[col] = cols[col]
        splits[name] = SplitData(name, path, texts, pairs, ids, raw)
    label_cols = [encode_labels(col, kind, splits, sources, strict_labels) for col, kind, sources in label_specs]
    return Dataset(splits, label_cols, text_column, pair_column, id_column)


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        n = float(v)
    elif isinstance(v, str):
        try:
            n = float(v)
        except ValueError:
            return None
    else:
        return None
    return n if math.isfinite(n) else None  # "inf" is not a usable target, "nan" is a missing one


def _missing(v: Any) -> bool:
    if v is None or v == "":
        return True
    if isinstance(v, float):
        return math.isnan(v)
    return isinstance(v, str) and v.strip().lower() == "nan"  # how a missing float prints


def vocabulary(seqs: dict[str, list[Sequence[str]]], order: Callable[[str], Any], strict: bool, what: str,
               where: Callable[[str, int], str]) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Label vocabulary of a column: the training split's labels (every split's when none is called "train") in
    `order`, then those that occur only in other splits, which a head cannot learn from train but which
    evaluation must still score (as errors). Returns (names, {label: {split: count}} of the latter).

    `strict` refuses such labels instead, naming the first (`what`: the kind of label; `where(split, i)`: the
    place of example i); `seqs` holds, per split, a sequence of labels per example (one for sentence tasks).
    """
    src = [seqs["train"]] if "train" in seqs else list(seqs.values())
    known = sorted({t for s in src for seq in s for t in seq}, key=order)
    seen = set(known)
    unseen: dict[str, dict[str, int]] = {}
    for split, s in seqs.items():
        for i, seq in enumerate(s):
            for t in seq:
                if t in seen:
                    continue
                if strict:
                    raise InputError(f"{where(split, i)}: {what} {t!r} does not occur in the training split; "
                                     "fix it or add training examples for it (without --strict-labels it is kept "
                                     "and counted as an error in evaluation)")
                per = unseen.setdefault(t, {})
                per[split] = per.get(split, 0) + 1
    unseen = {t: unseen[t] for t in sorted(unseen, key=order)}
    return known + list(unseen), unseen


def describe_unseen(unseen: dict[str, dict[str, int]]) -> str:
    """`'SYM' (test 3), 'X' (validation 1)`: labels absent from train with their counts per split."""
    return ", ".join(f"{name!r} ({', '.join(f'{k} {n}' for k, n in per.items())})" for name, per in unseen.items())


def encode_labels(col: str, kind: str, splits: dict[str, SplitData], names: list[str] | None = None,
                  strict: bool = False) -> LabelColumn:
    """Targets of column `col` in every split (`targets[col]`); `names`: the label names of 0/1 columns named
    together (multilabel); `strict`: refuse a class absent from the training split (see `vocabulary`)."""
    if kind == "multilabel" or (kind == "auto" and any(is_list(v) for s in splits.values() for v in s.raw_labels[col])):
        return LabelColumn(col, "multilabel", encode_multilabel(col, splits, names))
    for s in splits.values():
        for i, v in enumerate(s.raw_labels[col]):
            if _missing(v):
                raise InputError(f"split {s.name!r} ({s.source}) row {i}: label {col!r} is missing; "
                                 "label every row or drop the unlabelled ones")
    values = [v for s in splits.values() for v in s.raw_labels[col]]
    numbers = [_as_number(v) for v in values]
    if kind == "auto":
        # Integers (GLUE's 0/1) are classes; a column with fractional numbers is a regression target.
        all_numeric = all(n is not None for n in numbers)
        kind = "regression" if all_numeric and any(n != int(n) for n in numbers) else "class"
    if kind == "regression":
        for s in splits.values():
            bad = [v for v in s.raw_labels[col] if _as_number(v) is None]
            if bad:
                raise InputError(f"label column {col!r} is regression but split {s.name!r} has the non-numeric or "
                                 f"infinite value {bad[0]!r}; fix it, or use {col}:class for text labels")
            s.targets[col] = np.asarray([_as_number(v) for v in s.raw_labels[col]], dtype=np.float32)
        return LabelColumn(col, "regression")
    # class: vocabulary from the training split (or every split when there is none called "train").
    def key(v: Any) -> str:
        n = _as_number(v)
        return str(int(n)) if n is not None and n == int(n) else str(v)

    keys = {name: [[key(v)] for v in s.raw_labels[col]] for name, s in splits.items()}
    vocab, unseen = vocabulary(keys, lambda x: (_as_number(x) is None, _as_number(x) or 0.0, x), strict,
                               f"label in column {col!r}", lambda split, i: f"split {split!r} row {i}")
    index = {n: i for i, n in enumerate(vocab)}
    for name, s in splits.items():
        s.targets[col] = np.asarray([index[k] for (k,) in keys[name]], dtype=np.int64)
    return LabelColumn(col, "class", vocab, unseen)
