"""`featstore push`, `pull` and `ls`: publish a store to any fsspec URL and fetch exact, verified copies.

Guarantees:
- push uploads every data file first and the manifest last, so a reader sees the whole store or none;
- a published store is immutable: pushing a different store to the same URL is refused, pushing the same
  one again is a no-op; an interrupted push resumes, skipping files already there and verified;
- pull downloads into a temporary directory next to the destination, checks every file against the
  manifest, then renames it into place; an interrupted pull resumes; a bad file is named, nothing installed;
- remote manifests are untrusted (`manifest.validate_published`): paths stay inside the destination and no
  file is read past the size its manifest declares.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

from .errors import InputError, StoreError
from .layout import MANIFEST, sha256_file
from .manifest import diff_settings, transfer_files, validate_published
from .reader import open_store
from .remote import PUSH_MARKER, SMALL, Remote, is_url, parse_manifest, printable
from .testhooks import pause_point

H5_NAME = "store.h5"
PULL_SUFFIX = ".featstore-pull"


@dataclass
class TransferResult:
    source: str
    dest: str
    fingerprint: str
    files: int  # files of the store (besides its manifest)
    transferred: int  # files sent or fetched this time
    resumed: int  # files already in place and verified
    bytes: int  # bytes sent or fetched this time
    seconds: float
    already: bool = False  # the destination already held this exact store: nothing done

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- push ------------------------------------------------------------------------------------------------

def _local_published(src: str) -> tuple[dict, bytes, dict[str, str]]:
    """(manifest as published, its bytes, rel -> local file) for a complete local store."""
    store = open_store(src)
    try:
        m = json.loads(json.dumps(store.manifest))
        if m.get("format") == "hdf5":
            store.close()
            m["hdf5"] = {"file": H5_NAME, "size": os.path.getsize(src), "sha256": sha256_file(src)}
            raw = json.dumps(m, indent=1).encode()
            local = {H5_NAME: src}
        else:
            with open(os.path.join(src, MANIFEST), "rb") as f:
                raw = f.read()  # published byte for byte: a pulled copy is identical
            local = {rel: os.path.join(src, *rel.split("/")) for rel in transfer_files(m)}
        validate_published(m, src)
        return m, raw, local
    finally:
        store.close()


def push(src: str, url: str, storage_options: dict[str, Any] | None = None, jobs: int = 8,
         progress: bool = True) -> TransferResult:
    """Publish the complete local store `src` at `url` (immutable once its manifest is there)."""
    t0 = time.perf_counter()
    if is_url(src):
        raise InputError(f"push takes a local store, not a URL ({src}); to copy between locations, pull then push")
    if jobs < 1:
        raise InputError("--jobs must be at least 1")
    m, raw, local = _local_published(src)
    files = transfer_files(m)
    remote = Remote(url, storage_options)
    fp = m["fingerprint"]
    result = TransferResult(src, remote.url, fp, len(files), 0, 0, 0, 0.0)

    theirs = remote.read_manifest(source=remote.url)
    if theirs is not None:
        if theirs["fingerprint"] != fp:
            raise StoreError(f"{remote.url} already holds a different store ({', '.join(_diff(theirs, m))} "
                             f"differ; fingerprint {theirs['fingerprint'][:16]}); published stores are immutable: "
                             "push to another URL")
        if transfer_files(theirs) != files or theirs["dataset"]["label_columns"] != m["dataset"]["label_columns"]:
            raise StoreError(f"{remote.url} already holds these features (fingerprint {fp[:16]}) with other files or "
                             "label columns; published stores are immutable: push under a new name")
        result.already, result.resumed = True, len(files)
        result.seconds = time.perf_counter() - t0
        return result

    marker = remote.read_small(PUSH_MARKER, 1 << 16)
    present = remote.listing()
    if marker is not None:
        try:
            theirs_fp = json.loads(marker).get("fingerprint")
        except (ValueError, AttributeError):
            theirs_fp = None
        if theirs_fp != fp:
            raise StoreError(f"{remote.url} holds an unfinished upload of a different store (fingerprint "
                             f"{str(theirs_fp)[:16]}); finish that push, delete the prefix, or push to another URL")
    elif present:
        raise StoreError(f"{remote.url} is not empty and holds no featstore store; push to an empty location")
    else:
        remote.put_bytes(PUSH_MARKER, json.dumps({"fingerprint": fp, "started": _now(), "tool": "featstore"}).encode())

    # resume: a file already there is kept only if its size and checksum match; partial files of a
    # killed push to a file system (temporary names) are removed
    strays = [rel for rel in present if rel not in files and ".part-" in rel.rsplit("/", 1)[-1]]
    _parallel(strays, lambda rel: remote.remove(rel) or True, jobs, None)
    candidates = [rel for rel in files if present.get(rel) == files[rel]["size"]]
    kept = set(_parallel(candidates, lambda rel: remote.digest(rel, files[rel]["size"]) ==
                         (files[rel]["size"], files[rel]["sha256"]), jobs, None))
    todo = [rel for rel in files if rel not in kept]

    def upload(rel: str) -> bool:
        meta, path = files[rel], local[rel]
        damaged = StoreError(f"local store {src}: {rel} does not match its checksum; run `featstore verify {src}` "
                             "(the store is damaged and was not published)")
        if meta["size"] < SMALL:  # read once, check, send those very bytes
            with open(path, "rb") as f:
                data = f.read(meta["size"] + 1)
            if len(data) != meta["size"] or _sha(data) != meta["sha256"]:
                raise damaged
            remote.put_bytes(rel, data)
        else:
            if os.path.getsize(path) != meta["size"] or sha256_file(path) != meta["sha256"]:
                raise damaged
            remote.put_file(rel, path)
        pause_point("file-transferred")  # crash tests kill the process here
        return True

    _parallel(todo, upload, jobs, _bar(sum(files[r]["size"] for r in todo), "push", progress,
                                       {r: files[r]["size"] for r in todo}))
    remote.put_bytes(MANIFEST, raw)  # last: from now on readers see the whole store
    remote.remove(PUSH_MARKER)
    result.transferred, result.resumed = len(todo), len(kept)
    result.bytes = sum(files[r]["size"] for r in todo)
    result.seconds = time.perf_counter() - t0
    return result


# -- pull ------------------------------------------------------------------------------------------------

def _inside(root: str, rel: str) -> str:
    """Local path of manifest path `rel` under `root`; refuses anything that would land outside it."""
    path = os.path.join(root, *rel.split("/"))
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise StoreError(f"manifest path {rel!r} leads outside {root}; refusing the store")
    return path


def pull(url: str, dest: str, storage_options: dict[str, Any] | None = None, jobs: int = 8,
         progress: bool = True) -> TransferResult:
    """Fetch the published store at `url` into local path `dest`, verified file by file, installed whole."""
    t0 = time.perf_counter()
    if is_url(dest) and not dest.startswith("file://"):
        raise InputError(f"pull writes to a local path, not {dest}; to copy between remotes, pull then push")
    if dest.startswith("file://"):
        dest = dest[len("file://"):]
    if jobs < 1:
        raise InputError("--jobs must be at least 1")
    dest = os.path.abspath(os.path.expanduser(dest.rstrip("/") or dest))
    remote = Remote(url, storage_options)
    raw = remote.read_small(MANIFEST)
    if raw is None:
        marker = remote.read_small(PUSH_MARKER, 1 << 16)
        raise StoreError(f"{remote.url} is an unfinished upload; re-run its `featstore push` to finish it" if marker
                         else f"no store at {remote.url} (no manifest.json there); list stores with `featstore ls`")
    m = parse_manifest(raw, remote.url)
    files = transfer_files(m)
    fp = m["fingerprint"]
    result = TransferResult(remote.url, dest, fp, len(files), 0, 0, 0, 0.0)
    if os.path.lexists(dest):
        mine = _local_manifest(dest)
        if mine is not None and mine.get("fingerprint") == fp and mine.get("complete") and \
                mine["dataset"].get("label_columns") == m["dataset"]["label_columns"]:
            result.already, result.resumed = True, len(files)
            result.seconds = time.perf_counter() - t0
            return result
        raise StoreError(f"{dest} already exists{' and holds a different store' if mine else ''}; "
                         "pull into a new path or remove it first")

    parent, base = os.path.split(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{base}{PULL_SUFFIX}")
    _prepare_tmp(tmp, fp, remote.url)
    targets = {rel: _inside(tmp, rel) for rel in files}

    def have(rel: str) -> bool:
        p = targets[rel]
        return os.path.isfile(p) and os.path.getsize(p) == files[rel]["size"] and sha256_file(p) == files[rel]["sha256"]

    kept = set(_parallel(list(files), have, jobs, None))
    todo = [rel for rel in files if rel not in kept]
    problems: list[str] = []

    def fetch(rel: str) -> bool:
        meta, final = files[rel], targets[rel]
        os.makedirs(os.path.dirname(final), exist_ok=True)
        part = f"{final}.part-{uuid.uuid4().hex[:8]}"
        try:
            try:
                got = remote.download(rel, meta["size"], part)
            except FileNotFoundError:
                got = None
            if got != (meta["size"], meta["sha256"]):
                from .cache import mismatch

                problems.append(str(mismatch(remote.url, rel, meta, got)))
                return False
            os.replace(part, final)
            pause_point("file-transferred")  # crash tests kill the process here
            return True
        finally:
            if os.path.exists(part):
                os.remove(part)

    done = _parallel(todo, fetch, jobs, _bar(sum(files[r]["size"] for r in todo), "pull", progress,
                                             {r: files[r]["size"] for r in todo}), keep_going=True)
    if problems:
        more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
        raise StoreError(f"{problems[0]}{more}; nothing was installed at {dest}")
    assert len(done) == len(todo)
    if m["format"] == "hdf5":
        (rel,) = files
        os.replace(targets[rel], dest)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        _remove_strays(tmp, set(targets.values()))
        _zarr_groups(tmp, files)
        with open(os.path.join(tmp, MANIFEST), "wb") as f:
            f.write(raw)  # byte for byte what was published
        os.remove(os.path.join(tmp, ".source.json"))
        os.rename(tmp, dest)
    result.transferred, result.resumed = len(todo), len(kept)
    result.bytes = sum(files[r]["size"] for r in todo)
    result.seconds = time.perf_counter() - t0
    return result


def _local_manifest(path: str) -> dict | None:
    from .layout import layout_for

    try:
        layout = layout_for(path)
        try:
            return layout.read_manifest()
        finally:
            layout.close()
    except (StoreError, OSError, ValueError):
        return None


def _prepare_tmp(tmp: str, fp: str, url: str) -> None:
    """The pull's working directory: reused when it belongs to the same store (resume), else started afresh."""
    stamp = os.path.join(tmp, ".source.json")
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        try:
            with open(stamp) as f:
                same = json.load(f).get("fingerprint") == fp
        except (OSError, ValueError, AttributeError):
            same = False
        if same:
            return
        shutil.rmtree(tmp)
    elif os.path.lexists(tmp):
        os.remove(tmp)
    os.makedirs(tmp)
    with open(stamp, "w") as f:
        json.dump({"fingerprint": fp, "url": url}, f)


def _remove_strays(root: str, keep: set[str]) -> None:
    """Left-overs of an interrupted pull (partial downloads) must not end up in the installed store."""
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if p not in keep and n != ".source.json":
                os.remove(p)


def _zarr_groups(root: str, files: Iterable[str]) -> None:
    """Group metadata for the root and every directory above an array, so the copy is a navigable Zarr tree."""
    import zarr

    dirs = {""}
    for rel in files:
        if rel == "zarr.json" or not rel.endswith("/zarr.json"):
            continue
        parts = rel.split("/")[:-2]  # the directories above this node (never inside an array)
        dirs.update("/".join(parts[:i + 1]) for i in range(len(parts)))
    for d in sorted(dirs):
        if not os.path.isfile(os.path.join(root, *d.split("/"), "zarr.json")):
            zarr.open_group(os.path.join(root, *d.split("/")) if d else root, mode="a", zarr_format=3)


# -- ls --------------------------------------------------------------------------------------------------

def ls(prefix: str, storage_options: dict[str, Any] | None = None, max_depth: int = 4) -> tuple[list[dict], list[str]]:
    """Published stores under `prefix`, from their manifests alone: (entries, problems). Unfinished uploads
    are listed with status `unfinished`; unreadable or unsafe manifests are reported as problems."""
    remote = Remote(prefix, storage_options)
    entries: list[dict] = []
    problems: list[str] = []
    base = remote.root.rstrip("/")
    queue: list[tuple[str, int]] = [(base, 0)]
    while queue:
        path, depth = queue.pop(0)
        children = remote.ls(path)
        names = {c["name"].rstrip("/").rsplit("/", 1)[-1]: c for c in children}
        rel = path[len(base):].strip("/") or "."
        url = remote.url if rel == "." else f"{remote.url.rstrip('/')}/{rel}"
        if MANIFEST in names:
            try:
                raw = remote.read_small(MANIFEST if rel == "." else f"{rel}/{MANIFEST}")
                m = parse_manifest(raw or b"", url)
                entries.append(_entry(rel, url, m))
            except StoreError as e:
                problems.append(str(e))
            continue
        if PUSH_MARKER in names:
            entries.append({"name": printable(rel), "url": printable(url), "status": "unfinished"})
            continue
        if depth < max_depth:
            for c in children:
                if c.get("type") == "directory" and not c["name"].rstrip("/").rsplit("/", 1)[-1].startswith("."):
                    queue.append((c["name"].rstrip("/"), depth + 1))
    entries.sort(key=lambda e: e["name"])
    return entries, problems


def _entry(name: str, url: str, m: dict) -> dict[str, Any]:
    return {
        "name": printable(name), "url": printable(url), "status": "published", "format": m["format"],
        "model": printable(m["model"].get("name")), "layers": m["settings"]["layers"],
        "splits": {k: v["n_examples"] for k, v in m["dataset"]["splits"].items()},
        "label_columns": [c["name"] for c in m["dataset"].get("label_columns", [])],
        "bytes": sum(f["size"] for f in transfer_files(m).values()), "fingerprint": m["fingerprint"],
        "created": printable(m.get("created")), "dtype": m["settings"]["dtype"],
    }


def format_ls(entries: list[dict]) -> str:
    from .verify import _bytes

    head = ("NAME", "MODEL", "LAYERS", "SPLITS", "SIZE", "FINGERPRINT", "CREATED")
    rows = []
    for e in entries:
        if e["status"] != "published":
            rows.append((e["name"], "(unfinished upload)", "", "", "", "", ""))
            continue
        rows.append((e["name"], _short(e["model"], 40), ",".join(map(str, e["layers"])),
                     " ".join(f"{k}:{v}" for k, v in e["splits"].items()), _bytes(e["bytes"]),
                     e["fingerprint"][:12], e["created"] or ""))
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows)


def _short(s: str | None, n: int) -> str:
    s = s or "?"
    return s if len(s) <= n else "..." + s[-(n - 3):]


# -- helpers ---------------------------------------------------------------------------------------------

def _diff(old: dict, new: dict) -> list[str]:
    try:
        return diff_settings(old, new)
    except (KeyError, TypeError, AttributeError):  # an odd but valid remote manifest: just say "fingerprint"
        return ["fingerprint"]


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _bar(total: int, desc: str, enabled: bool, sizes: dict[str, int]):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not enabled)
    bar.sizes = sizes
    return bar


def _parallel(items: list[str], fn: Callable[[str], bool], jobs: int, bar: Any, keep_going: bool = False) -> list[str]:
    """Run `fn` over items on a thread pool; returns the items for which it returned True. The first error
    stops the rest (unless `keep_going`) and is raised."""
    ok: list[str] = []
    if not items:
        if bar is not None:
            bar.close()
        return ok
    pool = ThreadPoolExecutor(max(1, min(jobs, len(items))))
    try:
        futures = {pool.submit(fn, it): it for it in items}
        from concurrent.futures import as_completed

        for fut in as_completed(futures):
            it = futures[fut]
            try:
                if fut.result():
                    ok.append(it)
            except BaseException:
                if not keep_going:
                    for f in futures:
                        f.cancel()
                raise
            if bar is not None:
                bar.update(bar.sizes.get(it, 0))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    return ok
