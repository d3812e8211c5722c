"""Running out of room or time: a full disk becomes one line naming the store and the space still needed, and
SIGTERM (a scheduler's or `kill`'s polite stop) ends a long run at its next safe point with committed work kept."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
from typing import Iterator

from ..errors import StoreError, Stopped
from .files import format_bytes

DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC (no space), EDQUOT (quota) or EFBIG (file too large: a file-size limit such as RLIMIT_FSIZE)."""
    return isinstance(e, OSError) and e.errno in DISK_FULL


def free_bytes(path: str) -> int | None:
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_full(e: OSError, what: str, path: str, needed: int | None, kept: str) -> StoreError:
    """The one line for a full disk: which store, why, how much more room is needed, what was kept."""
    free = free_bytes(path)
    why = os.strerror(e.errno) if e.errno else str(e)
    room = f"about {format_bytes(needed)} more free space is needed" if needed else "more free space is needed"
    return StoreError(f"{what} {path}: out of disk space ({why}); {room} (free now: "
                      f"{format_bytes(free) if free is not None else 'unknown'}); {kept}; free space and re-run the "
                      "same command to resume")


class StopFlag:
    """Set by SIGTERM; long loops call `check()` at safe points (between batches, segments or files)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def check(self, kept: str) -> None:
        if self.event.is_set():
            raise Stopped(f"stopped by SIGTERM; {kept}; re-run the same command to resume")


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[StopFlag]:
    """While inside, the first SIGTERM only sets the flag (the run stops at its next safe point); a second one
    terminates at once. Outside the main thread (no signal handlers there) the flag is never set."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame) -> None:  # noqa: ARG001
        flag.event.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)
