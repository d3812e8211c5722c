"""`featstore push` and `pull`: publish a store to any fsspec URL and fetch exact, verified copies.

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
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..errors import InputError, StoreError
from ..io.background import parallel_map
from ..io.cache import mismatch
from ..io.files import sha256_bytes
from ..io.hashing import algorithm_of, digest_bytes, expected, file_matches
from ..io.limits import disk_full, is_disk_full, stop_on_sigterm
from ..io.transport import SMALL, Remote, is_url, printable
from ..store import install_pulled, local_backend, open_store
from ..store.manifest import MANIFEST, PUSH_MARKER, diff_settings, transfer_files
from ..store.remote_backend import read_published
from ..testhooks import barrier, pause_point

PULL_SUFFIX = ".featstore-pull"


@dataclass(kw_only=True)
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

def push(src: str, url: str, storage_options: dict[str, Any] | None = None, jobs: int = 8,
         progress: bool = True) -> TransferResult:
    """Publish the complete local store `src` at `url` (immutable once its manifest is there)."""
    t0 = time.perf_counter()
    if is_url(src):
        raise InputError(f"push takes a local store, not a URL ({src}); to copy between locations, pull then push")
    if jobs < 1:
        raise InputError("--jobs must be at least 1")
    with open_store(src) as store:
        if store.backend.read_only:
            raise InputError(f"push takes a store written here, not a published copy ({src}); to copy between "
                             "locations, pull then push")
        publication = store.backend.writable().publication()
    m, raw, local = publication.manifest, publication.raw_manifest, publication.local_files
    files = transfer_files(m)
    remote = Remote(url, storage_options)
    fp = m["fingerprint"]
    result = _result(src, remote.url, fp, len(files))

    content = _content_id(m)
    present = _claim(remote, m, fp, content)
    if present is None:  # the destination already holds this very store
        result.already, result.resumed = True, len(files)
        result.seconds = time.perf_counter() - t0
        return result

    # resume: a file already there is kept only if its size and checksum match; partial files of a
    # killed push to a file system (temporary names) are removed
    strays = [rel for rel in present if rel not in files and ".part-" in rel.rsplit("/", 1)[-1]]
    parallel_map(strays, lambda rel: remote.remove(rel) or True, jobs)
    candidates = [rel for rel in files if present.get(rel) == files[rel]["size"]]
    kept = set(parallel_map(candidates, lambda rel: remote.digest(rel, files[rel]["size"], algorithm_of(files[rel]))
                            == expected(files[rel]), jobs))
    todo = [rel for rel in files if rel not in kept]

    def upload(rel: str) -> bool:
        meta, path = files[rel], local[rel]
        damaged = StoreError(f"local store {src}: {rel} does not match its checksum; run `featstore verify {src}` "
                             "(the store is damaged and was not published)")
        if meta["size"] < SMALL:  # read once, check, send those very bytes
            with open(path, "rb") as f:
                data = f.read(meta["size"] + 1)
            if len(data) != meta["size"] or digest_bytes(data, algorithm_of(meta)) != expected(meta)[1]:
                raise damaged
            remote.put_bytes(rel, data)
        else:
            if not file_matches(path, meta):
                raise damaged
            remote.put_file(rel, path)
        pause_point("file-transferred")  # crash tests kill the process here
        return True

    _transfer(todo, upload, jobs, {r: files[r]["size"] for r in todo}, "push", progress)
    # last, and exclusive: from now on readers see the whole store; a push of the same store that got there
    # first published the same files, anything else is refused (and cannot happen while the claim holds)
    if not remote.create_exclusive(MANIFEST, raw):
        _already_published(remote, _published_manifest(remote), m, fp, content)
    remote.remove(PUSH_MARKER)
    result.transferred, result.resumed = len(todo), len(kept)
    result.bytes = sum(files[r]["size"] for r in todo)
    result.seconds = time.perf_counter() - t0
    return result


def _content_id(m: dict[str, Any]) -> str:
    """What two pushes must share to publish together: the files and their checksums, and the label columns."""
    return sha256_bytes(json.dumps([transfer_files(m), m["dataset"]["label_columns"]], sort_keys=True).encode())


def _already_published(remote: Remote, theirs: dict | None, m: dict[str, Any], fp: str, content: str) -> bool:
    """True when `remote` holds exactly this store (nothing to do); a different store there is an error."""
    if theirs is None:
        return False
    if theirs["fingerprint"] != fp:
        raise StoreError(f"{remote.url} already holds a different store ({', '.join(_diff(theirs, m))} "
                         f"differ; fingerprint {theirs['fingerprint'][:16]}); published stores are immutable: "
                         "push to another URL")
    if _content_id(theirs) != content:
        raise StoreError(f"{remote.url} already holds these features (fingerprint {fp[:16]}) with other files or "
                         "label columns; published stores are immutable: push under a new name")
    return True


def _claim(remote: Remote, m: dict[str, Any], fp: str, content: str) -> dict[str, int] | None:
    """Take the right to upload to `remote`, atomically (`Remote.create_exclusive` of the push marker): of two
    pushes of different stores racing for one name exactly one wins, whatever the timing; a push of the same
    store (same files) joins the one under way or resumes a killed one. Returns the files already there, or
    None when the store is already published."""
    claim = json.dumps({"fingerprint": fp, "content": content, "started": _now(), "tool": "featstore"}).encode()
    for _ in range(10):  # a retry only when another push finished between two of our looks
        if _already_published(remote, _published_manifest(remote), m, fp, content):
            return None
        present = remote.listing()
        if present and PUSH_MARKER not in present:
            if _already_published(remote, _published_manifest(remote), m, fp, content):
                return None
            raise StoreError(f"{remote.url} is not empty and holds no featstore store; push to an empty location")
        barrier("push-claim")  # race tests: every push has passed the checks above before any claims
        if remote.create_exclusive(PUSH_MARKER, claim):
            # a push that finished (and released its claim) after our first look
            if _already_published(remote, _published_manifest(remote), m, fp, content):
                remote.remove(PUSH_MARKER)
                return None
            return present
        marker = remote.read_small(PUSH_MARKER, 1 << 16)
        if marker is None:
            continue  # released meanwhile: look again
        try:
            theirs = json.loads(marker)
            theirs_fp, theirs_content = theirs.get("fingerprint"), theirs.get("content", content)
        except (ValueError, AttributeError):
            theirs_fp = theirs_content = None
        if theirs_fp == fp and theirs_content == content:
            return present  # the same store: upload alongside (identical bytes) or resume a killed push
        raise StoreError(f"{remote.url} holds an unfinished upload of a different store (fingerprint "
                         f"{printable(theirs_fp)[:16] if theirs_fp else '?'}): another push is publishing it now "
                         "or was stopped; push to another URL, or finish or delete that upload")
    raise StoreError(f"{remote.url}: other pushes keep publishing and releasing this name; try again")


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
    published = read_published(remote)
    if published is None:
        raise StoreError(f"no store at {remote.url} (no manifest.json there); list stores with `featstore ls`")
    m, raw = published
    files = transfer_files(m)
    fp = m["fingerprint"]
    result = _result(remote.url, dest, fp, len(files))
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
        return file_matches(p, files[rel])

    kept = set(parallel_map(list(files), have, jobs))
    todo = [rel for rel in files if rel not in kept]
    problems: list[str] = []

    def fetch(rel: str) -> bool:
        stop.check(f"the files fetched so far are kept in {tmp}")
        meta, final = files[rel], targets[rel]
        os.makedirs(os.path.dirname(final), exist_ok=True)
        part = f"{final}.part-{uuid.uuid4().hex[:8]}"
        try:
            try:
                got = remote.download(rel, meta["size"], part, algorithm_of(meta))
            except FileNotFoundError:
                got = None
            if got != expected(meta):
                problems.append(str(mismatch(remote.url, rel, meta, got)))
                return False
            os.replace(part, final)
            pause_point("file-transferred")  # crash tests kill the process here
            return True
        finally:
            if os.path.exists(part):
                os.remove(part)

    try:
        with stop_on_sigterm() as stop:
            done = _transfer(todo, fetch, jobs, {r: files[r]["size"] for r in todo}, "pull", progress,
                             keep_going=True)
    except OSError as e:
        if not is_disk_full(e):
            raise
        fetched = [rel for rel in files if os.path.isfile(targets[rel])
                   and os.path.getsize(targets[rel]) == files[rel]["size"]]
        needed = sum(files[rel]["size"] for rel in files) - sum(files[rel]["size"] for rel in fetched)
        raise disk_full(e, "pull into", dest, needed,
                        f"{len(fetched)} of {len(files)} files are fetched and kept in {tmp}") from None
    if problems:
        more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
        raise StoreError(f"{problems[0]}{more}; nothing was installed at {dest}")
    assert len(done) == len(todo)
    os.remove(os.path.join(tmp, ".source.json"))
    install_pulled(tmp, dest, m, raw)
    result.transferred, result.resumed = len(todo), len(kept)
    result.bytes = sum(files[r]["size"] for r in todo)
    result.seconds = time.perf_counter() - t0
    return result


def _local_manifest(path: str) -> dict | None:
    backend = local_backend(path)
    try:
        return backend.read_manifest()
    except (StoreError, OSError, ValueError):
        return None
    finally:
        backend.close()


def _published_manifest(remote: Remote) -> dict | None:
    got = read_published(remote, unfinished_ok=True)
    return got[0] if got is not None else None


def _result(source: str, dest: str, fp: str, files: int) -> TransferResult:
    return TransferResult(source=source, dest=dest, fingerprint=fp, files=files, transferred=0, resumed=0, bytes=0,
                          seconds=0.0)


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


# -- helpers ---------------------------------------------------------------------------------------------

def _diff(old: dict, new: dict) -> list[str]:
    try:
        return diff_settings(old, new)
    except (KeyError, TypeError, AttributeError):  # an odd but valid remote manifest: just say "fingerprint"
        return ["fingerprint"]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _transfer(items: list[str], fn: Callable[[str], bool], jobs: int, sizes: dict[str, int], desc: str,
              progress: bool, keep_going: bool = False) -> list[str]:
    """`fn` over the files on `jobs` threads behind one byte-counting progress bar."""
    from ..io.progress import progress_bar

    with progress_bar(progress, total=sum(sizes.values()), unit="B", unit_scale=True, desc=desc) as bar:
        return parallel_map(items, fn, jobs, on_done=lambda it: bar.update(sizes.get(it, 0)), keep_going=keep_going)
