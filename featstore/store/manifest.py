"""The manifest: what a store holds and how it was made. Written last; validated on every open."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ..errors import NewerFormatError, StoreError
from .formats import format_backend
from ..io.hashing import algorithm_of, expected
from .encoding import CODED, DTYPES, ENCODINGS

FORMAT_VERSION = 1
MANIFEST = "manifest.json"  # the one name of a store's manifest, in every format and on every remote
EXTRACT_MARKER = ".featstore-extract.json"  # the manifest of an extraction to a URL still running
PUSH_MARKER = ".featstore-push.json"  # beside an upload in progress; removed once the manifest is published
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")
MAX_COUNT = 1 << 40  # bound on any declared count or size
MAX_FILES = 10_000_000  # bound on the files a published store may declare
MAX_PATH = 512
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def fingerprint(model: dict[str, Any], tokenizer: dict[str, Any], settings: dict[str, Any],
                split_hashes: dict[str, str]) -> str:
    """Hash over exactly what determines the features, never over run-time settings or labels. The encoding
    joins the hash only when it differs from the dtype, so stores from before encodings keep their fingerprint."""
    payload: dict[str, Any] = {
        "model": {"weights_sha256": model["weights_sha256"], "config": model["config"]},
        "tokenizer": tokenizer["sha256"],
        "settings": {k: settings[k] for k in ("layers", "max_length", "truncation", "pooling", "dtype")},
        "splits": split_hashes,
    }
    if settings.get("encoding", settings["dtype"]) != settings["dtype"]:
        payload["settings"]["encoding"] = settings["encoding"]
    if settings.get("project") is not None:  # likewise: only projected stores hash their width
        payload["settings"]["project"] = settings["project"]
    if "task" in settings:  # token/span stores: the task decides the tokenizer call and the alignment
        payload["settings"]["task"] = settings["task"]
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
    try:
        return _validate(m, source)
    except (AttributeError, TypeError, KeyError, ValueError) as e:  # a field of the wrong JSON type
        raise StoreError(f"{source}: manifest is malformed ({type(e).__name__}: {e}); refusing the store")


def check_format_version(v: Any, source: str) -> int:
    """Compatibility policy: every format version up to this reader's is read; a newer one is refused with the
    version it needs (docs/compatibility.md)."""
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise StoreError(f"{source}: manifest format_version {str(v)[:40]!r} is not a format version (1, 2, ...); "
                         "the store is damaged, re-extract or re-pull it")
    if v > FORMAT_VERSION:
        raise NewerFormatError(f"{source}: store format version {v} needs a featstore that reads format version "
                               f"{v} (this one reads versions 1 to {FORMAT_VERSION}); upgrade featstore")
    return v


def _validate(m: Any, source: str) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise StoreError(f"{source}: manifest is not a JSON object")
    check_format_version(m.get("format_version"), source)
    for key in ("fingerprint", "model", "tokenizer", "settings", "dataset", "complete"):
        if key not in m:
            raise StoreError(f"{source}: manifest lacks {key!r}; the store is damaged, re-extract or re-pull it")
    s = m["settings"]
    if s.get("dtype") not in DTYPES:
        raise StoreError(f"{source}: manifest dtype {s.get('dtype')!r} unknown")
    enc = s.get("encoding", s["dtype"])
    if enc not in ENCODINGS:
        raise StoreError(f"{source}: manifest encoding {enc!r} unknown (one of {', '.join(ENCODINGS)})")
    if enc != s["dtype"] and not (enc in CODED and s["dtype"] == "float32"):
        raise StoreError(f"{source}: manifest encoding {enc!r} contradicts dtype {s['dtype']!r} (a float encoding "
                         "is its dtype; 8-bit codes decode to float32)")
    derived = m.get("derived_from")
    if derived is not None and not (isinstance(derived, dict) and isinstance(derived.get("fingerprint"), str)
                                    and isinstance(derived.get("transform"), dict)):
        raise StoreError(f"{source}: manifest derived_from is malformed; refusing the store")
    layers = s.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, int) and 0 <= x < 10_000 for x in layers):
        raise StoreError(f"{source}: manifest layers {layers!r} invalid")
    hidden = _count(m["model"].get("hidden_size"), "model.hidden_size")
    project = s.get("project")
    if project is not None and (not isinstance(project, int) or isinstance(project, bool)
                                or not 1 <= project <= hidden):
        raise StoreError(f"{source}: manifest project {project!r} is not a width between 1 and {hidden}")
    stride = s.get("stride")
    if stride is not None and (not isinstance(stride, int) or isinstance(stride, bool) or not 1 <= stride
                               or s.get("task") != "span"):
        raise StoreError(f"{source}: manifest stride {stride!r} is not a positive token count of a span store")
    _validate_task(m, source)
    for split, meta in m["dataset"]["splits"].items():  # both required: readers index them
        safe_name(split, "split")
        _count(meta.get("n_examples"), f"split {split} n_examples")
        _count(meta.get("n_tokens"), f"split {split} n_tokens")
    for col in m["dataset"]["label_columns"]:
        safe_name(col.get("name"), "label column")
        names = col.get("names")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise StoreError(f"{source}: label names of column {col.get('name')!r} are not a list of strings")
        _validate_unseen(col, names, f"{source}: label column {col.get('name')!r}")
    features = m.get("label_features", [])
    if not isinstance(features, list) or not all(isinstance(c, str) for c in features):
        raise StoreError(f"{source}: manifest label_features {str(features)[:80]!r} is not a list of label columns")
    per_split: dict[str, list[int]] = {}
    for seg in m.get("segments", []):
        n = per_split.setdefault(seg.get("split"), [0, 0])
        n[0] += _count(seg.get("n_examples"), "segment n_examples")
        n[1] += _count(seg.get("n_tokens"), "segment n_tokens")
    if m["complete"]:
        for split, meta in m["dataset"].get("splits", {}).items():
            if per_split.get(split, [0, 0]) != [meta.get("n_examples"), meta.get("n_tokens")]:
                raise StoreError(f"{source}: split {split!r} declares {meta.get('n_examples')} examples and "
                                 f"{meta.get('n_tokens')} tokens, its segments hold {per_split.get(split, [0, 0])}; "
                                 "the store is damaged")
    for seg in m.get("segments", []):
        safe_name(seg.get("split"), "split")
        safe_name(seg.get("name"), "segment")
        _count(seg.get("n_examples"), "segment n_examples")
        _count(seg.get("n_tokens"), "segment n_tokens")
        for path, meta in seg.get("files", {}).items():
            _file_entry(path, meta, source)
    for path, meta in m.get("files", {}).items():
        _file_entry(path, meta, source)
    return m


def _file_entry(path: Any, meta: Any, source: str) -> None:
    """One checksummed file of the store: a safe relative path, a sane size and a hex digest (sha256, or the
    algorithm the entry names)."""
    safe_path(path)
    _count(meta.get("size"), f"size of {path}")
    digest = meta.get(algorithm_of(meta))
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise StoreError(f"{source}: file {path} has no valid sha256 (or blake3) checksum in the manifest; the "
                         "store is damaged")


TASK_KINDS = ("token", "span")


def _validate_task(m: dict[str, Any], source: str) -> None:
    """`settings.task` and `dataset.task` (token/span stores) agree, and the tag vocabulary is strings."""
    kind, task = m["settings"].get("task"), m["dataset"].get("task")
    if kind is None and task is None:
        return
    if kind not in TASK_KINDS or not isinstance(task, dict) or task.get("kind") != kind:
        raise StoreError(f"{source}: manifest task {kind!r} / dataset.task {str(task)[:80]!r} are inconsistent "
                         f"(one of {', '.join(TASK_KINDS)}, recorded in both); refusing the store")
    if kind == "token":
        names = task.get("tag_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise StoreError(f"{source}: manifest dataset.task.tag_names is not a list of tag strings")
        if task.get("scheme") not in ("IOB2", "IOBES", "none"):
            raise StoreError(f"{source}: manifest dataset.task.scheme {task.get('scheme')!r} unknown")
        _validate_unseen(task, names, f"{source}: dataset.task")
    for col, entry in task.get("tag_columns", {}).items():
        safe_name(col, "tag column")
        names = entry.get("tag_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise StoreError(f"{source}: manifest tag column {col!r} has no list of tag names")
        _validate_unseen(entry, names, f"{source}: tag column {col!r}")
    if not isinstance(task.get("splits", {}), dict):
        raise StoreError(f"{source}: manifest dataset.task.splits is not an object")


def _validate_unseen(entry: dict[str, Any], names: Any, where: str) -> None:
    """`unseen_in_train` (labels absent from train -> split -> count) names labels of the vocabulary."""
    unseen = entry.get("unseen_in_train", {})
    if not isinstance(unseen, dict) or not all(
            isinstance(per, dict) and (names is None or label in names)
            and all(isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_COUNT
                    for k, n in per.items()) for label, per in unseen.items()):
        raise StoreError(f"{where}: manifest unseen_in_train is malformed (labels of the vocabulary -> split -> "
                         "count); refusing the store")


def validate_published(m: Any, source: str) -> dict[str, Any]:
    """Stricter checks for a store that crosses machines (push, pull, ls, read from a URL): complete, a
    known format, hex fingerprint and checksums (they name cache files), bounded file count and sizes, and
    file paths that stay inside the store and cannot collide with each other or with the manifest."""
    validate(m, source)
    if m["complete"] is not True:
        raise StoreError(f"{source}: the store is incomplete; only complete stores are published and read remotely")
    layout = format_backend(m.get("format"), source)
    if not isinstance(m["fingerprint"], str) or not _HEX64.match(m["fingerprint"]):
        raise StoreError(f"{source}: manifest fingerprint {str(m['fingerprint'])[:80]!r} is not a sha256 hex digest")
    try:
        items = layout.published_files(m)
    except (AttributeError, TypeError, KeyError) as e:
        raise StoreError(f"{source}: manifest file list is malformed ({type(e).__name__}: {e})")
    if len(items) > MAX_FILES:
        raise StoreError(f"{source}: manifest declares {len(items)} files, more than {MAX_FILES}; refusing the store")
    seen: dict[str, dict] = {}
    total = 0
    for path, meta in items:
        safe_path(path)
        if len(path) > MAX_PATH or any(p.startswith(".") for p in path.split("/")) or path == MANIFEST:
            raise StoreError(f"manifest: file path {path[:MAX_PATH]!r} is reserved or too long; refusing the store")
        digest = meta.get(algorithm_of(meta)) if isinstance(meta, dict) else None
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise StoreError(f"{source}: file {path} has no valid sha256 (or blake3) checksum in the manifest; "
                             "refusing the store")
        total += _count(meta.get("size"), f"size of {path}")
        if path in seen and expected(seen[path]) != expected(meta):
            raise StoreError(f"{source}: file {path} is declared twice with different contents; refusing the store")
        seen[path] = meta
    _count(total, "total size of the store")
    for path in seen:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise StoreError(f"{source}: {'/'.join(parts[:i])} is declared both as a file and as a directory "
                                 f"(of {path}); refusing the store")
    return m


def transfer_files(m: dict[str, Any]) -> dict[str, dict]:
    """The files a published store consists of, beside its manifest (as its format lays them out)."""
    return dict(format_backend(m.get("format"), "manifest").published_files(m))


def split_segments(m: dict[str, Any], split: str) -> list[dict[str, Any]]:
    return sorted((s for s in m.get("segments", []) if s["split"] == split), key=lambda s: s["index"])


def all_files(m: dict[str, Any]) -> dict[str, dict]:
    """Every checksummed item of the store: segment files plus labels and label features."""
    files = dict(m.get("files", {}))
    for seg in m.get("segments", []):
        files.update(seg.get("files", {}))
    return files


def complete_manifest(manifest: dict[str, Any], records: list[dict[str, Any]], layers: list[int],
                      label_features: list[str]) -> dict[str, Any]:
    """Fill in what a finished store's manifest holds, from its committed segment records: per-layer
    statistics, the segment list, label-feature columns, `complete: true` and the date."""
    import time

    records = sorted(records, key=lambda r: (r["split"], r["index"]))
    stats = {}
    for k in layers:
        s, ss, n = (sum(r["stats"][str(k)][i] for r in records) for i in range(3))
        mean = s / max(n, 1)
        stats[f"L{k}"] = {"mean": mean, "std": max(ss / max(n, 1) - mean * mean, 0.0) ** 0.5}
    manifest["stats"] = stats
    manifest["segments"] = [{k: r[k] for k in ("split", "name", "index", "n_examples", "n_tokens", "files")}
                            for r in records]
    manifest["label_features"] = sorted(label_features)
    manifest["complete"] = True
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return manifest


def diff_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human list of what differs between two manifests' feature-defining parts."""
    out = []
    if old["model"].get("weights_sha256") != new["model"].get("weights_sha256"):
        out.append(f"model ({old['model'].get('name')} vs {new['model'].get('name')})")
    if old["tokenizer"].get("sha256") != new["tokenizer"].get("sha256"):
        out.append("tokenizer")
    for k in ("layers", "max_length", "truncation", "dtype", "encoding", "project", "pooling", "task"):
        if old["settings"].get(k, old["settings"].get("dtype") if k == "encoding" else None) != \
                new["settings"].get(k, new["settings"].get("dtype") if k == "encoding" else None):
            out.append(f"{k} ({old['settings'].get(k)} vs {new['settings'].get(k)})")
    os_, ns = old["dataset"]["splits"], new["dataset"]["splits"]
    if set(os_) != set(ns):
        out.append(f"splits ({sorted(os_)} vs {sorted(ns)})")
    else:
        out += [f"data of split {s!r}" for s in os_ if os_[s]["sha256"] != ns[s]["sha256"]]
    return out or ["fingerprint"]
