"""The manifest: what a store holds and how it was made. Written last; validated on every open."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .errors import StoreError

FORMAT_VERSION = 1
DTYPES = ("float16", "bfloat16", "float32")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")
MAX_COUNT = 1 << 40  # bound on any declared count or size


def fingerprint(model: dict[str, Any], tokenizer: dict[str, Any], settings: dict[str, Any],
                split_hashes: dict[str, str]) -> str:
    """Hash over exactly what determines the features, never over run-time settings or labels."""
    payload = {
        "model": {"weights_sha256": model["weights_sha256"], "config": model["config"]},
        "tokenizer": tokenizer["sha256"],
        "settings": {k: settings[k] for k in ("layers", "max_length", "truncation", "pooling", "dtype")},
        "splits": split_hashes,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def safe_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise StoreError(f"manifest: {what} {name!r} is not a safe name (letters, digits, _ . - only)")
    return name


def safe_path(path: str, what: str = "file") -> str:
    """A relative path inside the store: no absolute path, no `..`, no URL scheme."""
    if not isinstance(path, str) or not _SAFE_PATH.match(path) or any(p in (".", "..") for p in path.split("/")):
        raise StoreError(f"manifest: {what} path {path!r} is unsafe (absolute, '..' or a URL); refusing the store")
    return path


def _count(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_COUNT:
        raise StoreError(f"manifest: {what} = {v!r} is not a sane count; refusing the store")
    return v


def validate(m: Any, source: str) -> dict[str, Any]:
    """Check an untrusted manifest's shape, names, counts and paths. Returns it unchanged."""
    if not isinstance(m, dict):
        raise StoreError(f"{source}: manifest is not a JSON object")
    v = m.get("format_version")
    if v != FORMAT_VERSION:
        raise StoreError(f"{source}: store format version {v!r}, this featstore reads version {FORMAT_VERSION}; "
                         "upgrade featstore or re-extract")
    for key in ("fingerprint", "model", "tokenizer", "settings", "dataset", "complete"):
        if key not in m:
            raise StoreError(f"{source}: manifest lacks {key!r}; the store is damaged, re-extract or re-pull it")
    s = m["settings"]
    if s.get("dtype") not in DTYPES:
        raise StoreError(f"{source}: manifest dtype {s.get('dtype')!r} unknown")
    layers = s.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, int) and 0 <= x < 10_000 for x in layers):
        raise StoreError(f"{source}: manifest layers {layers!r} invalid")
    _count(m["model"].get("hidden_size"), "model.hidden_size")
    for split in m["dataset"].get("splits", {}):
        safe_name(split, "split")
    for col in m["dataset"].get("label_columns", []):
        safe_name(col.get("name"), "label column")
    for seg in m.get("segments", []):
        safe_name(seg.get("split"), "split")
        safe_name(seg.get("name"), "segment")
        _count(seg.get("n_examples"), "segment n_examples")
        _count(seg.get("n_tokens"), "segment n_tokens")
        for path, meta in seg.get("files", {}).items():
            safe_path(path)
            _count(meta.get("size"), f"size of {path}")
    for path, meta in m.get("files", {}).items():
        safe_path(path)
        _count(meta.get("size"), f"size of {path}")
    return m


def split_segments(m: dict[str, Any], split: str) -> list[dict[str, Any]]:
    return sorted((s for s in m.get("segments", []) if s["split"] == split), key=lambda s: s["index"])


def all_files(m: dict[str, Any]) -> dict[str, dict]:
    """Every checksummed item of the store: segment files plus labels and label features."""
    files = dict(m.get("files", {}))
    for seg in m.get("segments", []):
        files.update(seg.get("files", {}))
    return files


def diff_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human list of what differs between two manifests' feature-defining parts."""
    out = []
    if old["model"].get("weights_sha256") != new["model"].get("weights_sha256"):
        out.append(f"model ({old['model'].get('name')} vs {new['model'].get('name')})")
    if old["tokenizer"].get("sha256") != new["tokenizer"].get("sha256"):
        out.append("tokenizer")
    for k in ("layers", "max_length", "truncation", "dtype", "pooling"):
        if old["settings"].get(k) != new["settings"].get(k):
            out.append(f"{k} ({old['settings'].get(k)} vs {new['settings'].get(k)})")
    os_, ns = old["dataset"]["splits"], new["dataset"]["splits"]
    if set(os_) != set(ns):
        out.append(f"splits ({sorted(os_)} vs {sorted(ns)})")
    else:
        out += [f"data of split {s!r}" for s in os_ if os_[s]["sha256"] != ns[s]["sha256"]]
    return out or ["fingerprint"]
