"""Deterministic pause points for crash tests (inert unless FEATSTORE_TEST_PAUSE is set).

A test that kills a child process at a known point (after the 3rd committed segment, after the 12th transferred
file) sets `FEATSTORE_TEST_PAUSE=<name>:<n>` and `FEATSTORE_TEST_PAUSE_FILE=<path>`; the n-th call of
`pause_point(name)` in the child creates that file and then blocks the calling thread for good, so the test
kills the child exactly there instead of racing it. Later calls with the same name block as well.
"""
from __future__ import annotations

import os
from typing import Callable
import threading
import time

_counts: dict[str, int] = {}
_lock = threading.Lock()


def pause_point(name: str) -> None:
    """A named point of a long run (a segment committed, a file transferred) where tests act: fill the disk
    (FEATSTORE_TEST_FSIZE), hand over to the test (FEATSTORE_TEST_STEP), or block forever to be killed there
    (FEATSTORE_TEST_PAUSE, when its count is reached)."""
    _limit_file_size(name)
    step_point(name)
    spec = os.environ.get("FEATSTORE_TEST_PAUSE")
    if not spec:
        return
    want, _, n = spec.rpartition(":")
    if want != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] < int(n):
            return
    marker = os.environ.get("FEATSTORE_TEST_PAUSE_FILE")
    if marker:
        with open(marker, "a") as f:
            f.write(f"{name}:{_counts[name]} pid {os.getpid()}\n")
    while True:
        time.sleep(3600)


def fail_at_segment(rank: int, n: int, committed: Callable[[], int]) -> None:
    """FEATSTORE_TEST_FAIL=RANK:N:raise|kill: that rank fails before its segment N, once exactly N of its
    segments are committed (`committed()` counts them; deterministic, no race). `kill` is SIGKILL, as the OOM
    killer does."""
    spec = os.environ.get("FEATSTORE_TEST_FAIL")
    if not spec:
        return
    r, at, mode = spec.split(":")
    if int(r) != rank or int(at) != n:
        return
    while committed() < n:
        time.sleep(0.01)
    if mode == "kill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"FEATSTORE_TEST_FAIL after {n} committed segments")


def barrier(name: str, timeout: float = 120.0) -> None:
    """FEATSTORE_TEST_BARRIER=<name>:<dir>:<n>: the processes reaching `barrier(name)` wait there until n of them
    have arrived, then all go on together. A race test uses it to force every racer past a check before any of
    them acts on it (two pushes past the `is the name free?` check before either claims it): no timing luck."""
    rest = _armed("FEATSTORE_TEST_BARRIER", name)
    if rest is None:
        return
    directory, _, n = rest.rpartition(":")
    _touch(os.path.join(directory, f"arrived-{os.getpid()}-{threading.get_ident()}"))
    _wait(lambda: sum(f.startswith("arrived-") for f in os.listdir(directory)) >= int(n), timeout,
          f"test barrier {name}: fewer than {n} processes arrived")


def step_point(name: str, timeout: float = 120.0) -> None:
    """FEATSTORE_TEST_STEP=<name>:<dir>: each call of `step_point(name)` writes `<dir>/reached-<k>` and waits for
    `<dir>/go-<k>`, so a test can look at the world (open the store being published) at every step."""
    directory = _armed("FEATSTORE_TEST_STEP", name)
    if directory is None:
        return
    k = _tick(f"step:{name}")
    _touch(os.path.join(directory, f"reached-{k}"))
    _wait(lambda: os.path.exists(os.path.join(directory, f"go-{k}")), timeout, f"test step {name}: no go-{k}")


def _armed(variable: str, name: str) -> str | None:
    """What follows `<name>:` in the environment variable when it names this point, else None."""
    want, _, rest = os.environ.get(variable, "").partition(":")
    return rest if want == name and rest else None


def _tick(key: str) -> int:
    with _lock:
        _counts[key] = _counts.get(key, 0) + 1
        return _counts[key]


def _touch(path: str) -> None:
    with open(path, "w"):
        pass


def _wait(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout} s")
        time.sleep(0.005)


def _limit_file_size(name: str) -> None:
    """FEATSTORE_TEST_FSIZE=<name>:<n>:<bytes>: at the n-th pass through `name`, lower this process's RLIMIT_FSIZE
    to <bytes>. Every later write past that size fails with EFBIG (CPython ignores SIGXFSZ), the way a full disk
    refuses writes with ENOSPC: a real write error, raised where the code really writes, at a known point."""
    rest = _armed("FEATSTORE_TEST_FSIZE", name)
    if rest is None:
        return
    at, _, limit = rest.partition(":")
    if _tick(f"fsize:{name}") == int(at):
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
