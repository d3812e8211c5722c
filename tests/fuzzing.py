"""Property-based fuzzing of untrusted JSON (manifests, head.json, remote listings) with Hypothesis.

`mutations(doc)` draws 1-3 edits anywhere in a valid document: a value replaced by a hostile one (wrong type,
huge or negative number, path trick, unicode, control characters), a key deleted, a number scaled, a string
extended with a path trick; or the file's bytes truncated. `guarded()` runs code under two watches: every file
Python opens must lie inside the allowed roots (an audit hook), and the peak of traced allocations stays under a
bound (tracemalloc), so a size read from the document can never drive an allocation.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import tracemalloc
from typing import Any, Iterator

from hypothesis import HealthCheck, settings, strategies as st

# Bounded: the whole suite stays inside its time; FEATSTORE_FUZZ_EXAMPLES raises it for a long local run.
EXAMPLES = int(os.environ.get("FEATSTORE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=30_000, derandomize=True, database=None, report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
ALLOC_LIMIT = 64 << 20  # far above what reading these tiny stores needs, far below any count-sized allocation

PATH_TRICKS = ["../../escaped", "/etc/passwd", "s3://other-bucket/x", "..", ".", "", "a/../../x", "C:\\x", "a\x00b",
               "manifest.json", ".featstore-push.json", "x" * 600, "é/ü/ß", "\x1b[31mred", "a//b", "~/x", "file:///tmp"]
HOSTILE = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([-1, 0, 1, 2 ** 31, 2 ** 63, 2 ** 64 + 1, 10 ** 18, -(2 ** 63), 10 ** 40]),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(PATH_TRICKS),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-3, 3), max_size=2),
)


def _descend(data: st.DataObject, doc: Any) -> tuple[Any, Any]:
    """(container, key) of a node drawn anywhere in `doc`; (None, None) is the root."""
    parent, key, node = None, None, doc
    while isinstance(node, (dict, list)) and node:
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        k = data.draw(st.sampled_from(keys))
        parent, key, node = node, k, node[k]
        if data.draw(st.booleans()):
            break
    return parent, key


def mutated_bytes(data: st.DataObject, doc: Any) -> bytes:
    """A hostile variant of `doc`, as the bytes of a file."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        parent, key = _descend(data, doc)
        action = data.draw(st.sampled_from(["replace", "delete", "scale", "extend"]))
        old = doc if parent is None else parent[key]
        if action == "replace" or parent is None:
            new = data.draw(HOSTILE)
        elif action == "delete":
            del parent[key]
            continue
        elif action == "scale" and isinstance(old, (int, float)) and not isinstance(old, bool):
            new = old * data.draw(st.sampled_from([-1, 2, 2 ** 40, 10 ** 12])) + data.draw(st.integers(-2, 2))
        elif action == "extend" and isinstance(old, str):
            new = old + data.draw(st.sampled_from(["/../../x", "\x00", "\u202e", "/", ".."]))
        else:
            new = data.draw(HOSTILE)
        if parent is None:
            doc = new
        else:
            parent[key] = new
    raw = json.dumps(doc).encode()
    if data.draw(st.integers(0, 9)) == 0:  # now and then damage the bytes themselves
        raw = raw[:data.draw(st.integers(0, max(len(raw) - 1, 0)))] + data.draw(st.sampled_from([b"", b"\xff\xfe"]))
    return raw


class _Watch:
    active: "_Watch | None" = None

    def __init__(self, allowed: list[str]):
        self.allowed = [os.path.realpath(a) for a in allowed] + ["/proc", "/sys", "/dev"]
        self.outside: list[str] = []


def _audit(event: str, args: tuple) -> None:
    watch = _Watch.active
    if watch is None or event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.realpath(os.fsdecode(args[0]))
    if path.endswith((".py", ".pyc", ".so")) or path.startswith((sys.prefix, sys.base_prefix)):
        return  # lazy imports
    if not any(path == a or path.startswith(a.rstrip("/") + "/") for a in watch.allowed):
        watch.outside.append(path)


sys.addaudithook(_audit)


@contextlib.contextmanager
def guarded(*allowed: str) -> Iterator[None]:
    """Fail if the block opens a file outside `allowed` or allocates more than ALLOC_LIMIT at its peak."""
    watch = _Watch([str(a) for a in allowed])
    _Watch.active = watch
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        _Watch.active = None
    assert not watch.outside, f"opened outside the store: {watch.outside[:3]}"
    assert peak < ALLOC_LIMIT, f"allocated {peak} bytes at peak"


def one_line(message: str) -> None:
    assert message and "\n" not in message.strip() and "Traceback" not in message, message


@contextlib.contextmanager
def replaced(path: str, raw: bytes) -> Iterator[None]:
    """`path` holds `raw` inside the block and its original bytes again after it."""
    with open(path, "rb") as f:
        good = f.read()
    try:
        with open(path, "wb") as f:
            f.write(raw)
        yield
    finally:
        with open(path, "wb") as f:
            f.write(good)
