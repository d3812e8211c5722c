"""`featstore info` and `featstore verify`."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .errors import NewerFormatError, StoreError
from .io.files import format_bytes
from .io.transport import printable
from .store import Split, Store, open_store
from .store.encoding import SIDE, bytes_per_token, code_problems, encoding_of, from_stored, is_coded
from .io.hashing import algorithm_of, expected
from .store.manifest import all_files


def info(path: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """A summary of a store from its manifest alone (no feature reads); works on incomplete stores too.
    `path` may be a URL of a published store (see `open_store`)."""
    store = open_store(path, allow_incomplete=True, storage_options=storage_options, cache_dir=cache_dir)
    m = store.manifest
    try:
        files = all_files(m)
        splits = {}
        for name, s in m["dataset"]["splits"].items():
            splits[name] = {"examples": s["n_examples"], "tokens": s["n_tokens"], "truncated": s.get("truncated", 0),
                            "segments": sum(1 for g in m.get("segments", []) if g["split"] == name)}
        return {k: printable(v) if isinstance(v, str) else v for k, v in {
            "path": path, "format": m.get("format"), "complete": bool(m["complete"]), "fingerprint": m["fingerprint"],
            "model": m["model"].get("name"), "model_path": m["model"].get("path"),
            "architecture": m["model"].get("architecture"), "num_layers": m["model"].get("num_layers"),
            "hidden_size": m["model"]["hidden_size"], "backbone_parameters": m["model"].get("num_parameters"),
            "layers": m["settings"]["layers"], "dtype": m["settings"]["dtype"],
            "encoding": encoding_of(m["settings"]), "project": m["settings"].get("project"),
            "bytes_per_token": bytes_per_token(m),
            "max_length": m["settings"]["max_length"], "splits": splits,
            "label_columns": {c["name"]: {"kind": c["kind"], "labels": c["names"],
                                          "unseen_in_train": c.get("unseen_in_train", {})}
                              for c in m["dataset"]["label_columns"]},
            "bytes": int(sum(f["size"] for f in files.values())), "files": len(files),
            "compression": m["layout"]["compression"], "created": m.get("created"),
            "tool_version": m["tool"]["version"], "task": m["dataset"].get("task"),
            "disk": disk_summary(store.backend.disk_usage()),
        }.items()}
    except (KeyError, TypeError, AttributeError) as e:  # a manifest from elsewhere may lack optional fields
        raise StoreError(f"{path}: manifest lacks or mangles {e}; the store is damaged or from another tool")
    finally:
        store.close()


def format_info(d: dict[str, Any]) -> str:
    lines = [
        f"store        {d['path']}  ({d['format']}, {'complete' if d['complete'] else 'INCOMPLETE'})",
        f"fingerprint  {d['fingerprint']}",
        f"model        {d['model']}  ({d['architecture']}, {d['num_layers']} layers, hidden {d['hidden_size']}, "
        f"{_count(d['backbone_parameters'])} params)",
        f"features     layers {d['layers']}  encoding {d['encoding']}"
        f"{'' if d['encoding'] == d['dtype'] else ' (read as ' + d['dtype'] + ')'}  max_length {d['max_length']}  "
        f"compression {d['compression']}"
        f"{'  projected to ' + str(d['project']) + ' dims' if d.get('project') else ''}",
        f"per token    {d['bytes_per_token']:,} bytes (all kept layers, token features and their scales)",
        f"size         {format_bytes(d['bytes'])} in {d['files']} files",
        *([f"on disk      {format_bytes(d['disk']['bytes'])} of array data for {format_bytes(d['disk']['ideal'])} of "
           f"values ({d['disk']['ratio']:.3f}x; most padded array {d['disk']['worst_ratio']:.3f}x: "
           f"{d['disk']['worst']})"] if d.get("disk") else []),
        "splits",
    ]
    for name, s in d["splits"].items():
        lines.append(f"  {name:<12} {s['examples']:>9,} examples {s['tokens']:>12,} tokens  "
                     f"{s['segments']} segments  {s['truncated']} truncated")
    for name, c in d["label_columns"].items():
        what = f"{len(c['labels'])} classes: {', '.join(c['labels'][:8])}{' ...' if len(c['labels']) > 8 else ''}" \
            if c["kind"] == "class" else "regression"
        lines.append(f"label        {name} ({what}){_unseen(c.get('unseen_in_train'))}")
    task = d.get("task")
    if task:  # token/span stores: the task, its tags and what truncation cost
        what = (f"{len(task['tag_names'])} tags, scheme {task['scheme']}" if task["kind"] == "token" else "answer spans")
        counts = "; ".join(f"{k}: " + ", ".join(f"{n} {w.replace('_', ' ')}" for w, n in v.items())
                           for k, v in task.get("splits", {}).items())
        lines.append(f"task         {task['kind']} ({what}); {counts}{_unseen(task.get('unseen_in_train'))}")
        for col, c in task.get("tag_columns", {}).items():
            lines.append(f"tag column   {col} ({len(c['tag_names'])} tags, scheme {c['scheme']})"
                         f"{_unseen(c.get('unseen_in_train'))}")
    if d.get("created"):
        lines.append(f"created      {d['created']} by featstore {d['tool_version']}")
    return "\n".join(lines)


def _unseen(unseen: dict[str, dict[str, int]] | None) -> str:
    """`; not in train: 'SYM' (test 3)` for labels kept although the training split lacks them."""
    if not unseen:
        return ""
    from .extract.inputs import describe_unseen

    return f"; not in train: {describe_unseen(unseen)}"


def disk_summary(usage: dict[str, tuple[int, int]] | None) -> dict[str, Any] | None:
    """Bytes the arrays take on disk against the bytes of their values (the ideal: no padding), and the most
    padded array."""
    if not usage:
        return None
    stored, ideal = sum(s for s, _ in usage.values()), sum(i for _, i in usage.values())
    ratios = {k: s / i for k, (s, i) in usage.items() if i > 0} or {"-": 1.0}
    worst = max(ratios, key=ratios.get)
    return {"bytes": stored, "ideal": ideal, "ratio": stored / max(ideal, 1), "worst": worst,
            "worst_ratio": ratios[worst]}


def _count(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def verify(path: str, check_values: bool = True, progress: bool = False,
           storage_options: dict[str, Any] | None = None, cache_dir: str | None = None,
           io_threads: int | None = None) -> list[str]:
    """Every problem found (empty list = the store is whole): manifest, checksums, counts, finiteness.

    On a URL this verifies the published copy in place: every file is downloaded and checked against the
    manifest (verified files stay in the local cache, so the value scan reads them locally). `io_threads`
    files are checksummed side by side (default: `io.hashing.default_io_threads`, 8 downloads for a URL)."""
    try:
        store = open_store(path, allow_incomplete=True, storage_options=storage_options, cache_dir=cache_dir)
    except NewerFormatError:
        raise  # not damage: this reader is too old, which verify cannot judge
    except StoreError as e:
        return [str(e)]
    problems: list[str] = []
    try:
        m = store.manifest
        if not m["complete"]:
            problems.append("manifest says the store is incomplete (extraction did not finish)")
            return problems
        files = all_files(m)
        from .io.progress import progress_bar

        def checksum(name: str) -> Any:
            try:
                return store.backend.checksum(name, algorithm_of(files[name]))
            except Exception as e:  # noqa: BLE001 - an unreadable item is a problem to list, not a crash
                return e

        items = sorted(files.items())
        # files are hashed side by side (hashlib and blake3 release the GIL); a remote store: one download each
        jobs = io_threads or (8 if store.is_remote else store.backend.io.threads)
        with ThreadPoolExecutor(jobs) as pool:
            results = pool.map(checksum, [name for name, _ in items])
            checked = progress_bar(progress, zip(items, results), total=len(items), desc="checksums", unit="file")
            for (name, meta), got in checked:
                problems += _checksum_problem(name, meta, got)
        if problems:
            return problems  # reading damaged arrays would only repeat the same problems
        for split in store.splits:
            problems += _check_split(store, split, check_values)
    finally:
        store.close()
    return problems


def _checksum_problem(name: str, meta: dict, got: Any) -> list[str]:
    problems = []
    if isinstance(got, Exception):
        problems.append(f"{name}: unreadable ({type(got).__name__}: {got})")
    elif got is None:
        problems.append(f"{name}: missing")
    elif got[0] != meta["size"]:
        problems.append(f"{name}: size {got[0]} != {meta['size']} in the manifest")
    elif got[1] != expected(meta)[1]:
        problems.append(f"{name}: {algorithm_of(meta)} checksum mismatch (the file was changed or corrupted)")
    return problems


def _check_split(store: Store, name: str, check_values: bool) -> list[str]:
    problems = []
    try:
        sp = store.split(name)
        meta = store.manifest["dataset"]["splits"][name]
        n, D = sp.n_examples, store.width
        if n != meta["n_examples"] or sp.n_tokens != meta["n_tokens"]:
            problems.append(f"split {name}: segments hold {n} examples / {sp.n_tokens} tokens, "
                            f"manifest says {meta['n_examples']} / {meta['n_tokens']}")
        for i, seg in enumerate(sp.segments):
            off = np.asarray(sp.segment_array(i, "offsets")[:])
            length = np.asarray(sp.segment_array(i, "length")[:])
            if len(off) != seg["n_examples"] + 1 or off[0] != 0 or off[-1] != seg["n_tokens"] \
                    or not np.array_equal(np.diff(off), length):
                problems.append(f"split {name} segment {seg['name']}: offsets and lengths disagree")
            for k in store.layers:
                shape = sp.segment_array(i, f"L{k}/tokens").shape
                if tuple(shape) != (seg["n_tokens"], D):
                    problems.append(f"split {name} segment {seg['name']} layer {k}: tokens shape {shape}")
                for kind in ("cls", "mean"):
                    if tuple(sp.segment_array(i, f"L{k}/{kind}").shape) != (seg["n_examples"], D):
                        problems.append(f"split {name} segment {seg['name']} layer {k}: {kind} shape wrong")
        if not np.array_equal(np.sort(sp.rows), np.arange(n)):
            problems.append(f"split {name}: row map is not a permutation of 0..{n - 1}")
        if len(sp.example_ids) != n:
            problems.append(f"split {name}: {len(sp.example_ids)} example ids for {n} examples")
        for col in store.label_columns:
            if len(sp.targets(col)) != n:
                problems.append(f"split {name}: label {col} has {len(sp.targets(col))} values for {n} examples")
        if check_values and not problems:
            problems += _check_finite(store, sp)
    except StoreError as e:
        problems.append(str(e))
    return problems


def _check_finite(store: Store, sp: Split) -> list[str]:
    """Every value finite; for 8-bit codes: codes in range, scales finite and positive."""
    if is_coded(store.encoding):
        return _check_codes(store, sp)
    problems = []
    for i, seg in enumerate(sp.segments):
        for k in store.layers:
            for kind in ("tokens", "cls", "mean"):
                arr = sp.segment_array(i, f"L{k}/{kind}")
                step = max(1, (8 << 20) // max(1, arr.shape[1] * 4))
                for a in range(0, arr.shape[0], step):
                    block = from_stored(np.asarray(arr[a:a + step]), store.dtype)
                    if not np.isfinite(block).all():
                        problems.append(f"split {sp.name} segment {seg['name']} layer {k} {kind}: non-finite values")
                        break
    return problems


def _check_codes(store: Store, sp: Split) -> list[str]:
    problems = []
    for i, seg in enumerate(sp.segments):
        for k in store.layers:
            for kind in ("tokens", "cls", "mean"):
                name = f"L{k}/{kind}"
                arr = sp.segment_array(i, name)
                side = {s: sp.segment_array(i, f"{name}_{s}") for s in SIDE}
                shift, gain = np.asarray(side["shift"][:]), np.asarray(side["gain"][:])
                step = max(1, (8 << 20) // max(1, arr.shape[1]))
                for a in range(0, arr.shape[0], step):
                    found = code_problems(np.asarray(arr[a:a + step]), store.encoding,
                                          np.asarray(side["scale"][a:a + step]), shift, gain)
                    if found:
                        problems.append(f"split {sp.name} segment {seg['name']} layer {k} {kind}: {'; '.join(found)}")
                        break
    return problems
