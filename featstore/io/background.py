"""The background-thread patterns of featstore and heads, written once.

- `BackgroundWorker`: the caller hands items to one thread through a bounded queue (the segment writer:
  the forward pass never waits on disk unless `depth` items are already pending).
- `read_ahead`: one thread produces items ahead of the caller through a bounded queue (the heads batch
  prefetcher: batches are assembled while the previous ones train).
- `parallel_map`: a thread pool over independent items, first error stops the rest (share transfers).

Errors raised on a background thread are re-raised in the caller's thread; leaving early never leaves a
thread behind.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless `stop` is set first; False when stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class BackgroundWorker(Generic[T]):
    """Run `fn(item)` on one thread for every item `put`, in order. A context manager: a normal exit waits for
    every pending item and re-raises the first error; an exit by exception drops what is still pending."""

    def __init__(self, fn: Callable[[T], None], depth: int = 2, name: str = "featstore-worker"):
        self._fn = fn
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE or self._stop.is_set():
                return
            if self._error is not None:
                continue
            try:
                self._fn(item)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = e

    def put(self, item: T) -> None:
        self._raise()
        if not _put(self._queue, item, self._stop):
            raise RuntimeError("put on a stopped BackgroundWorker")

    def close(self) -> None:
        """Wait for every pending item; re-raise the first error."""
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop after the item in hand; pending items are dropped."""
        self._stop.set()
        try:
            self._queue.put_nowait(_DONE)
        except queue.Full:
            pass
        self._thread.join()

    def check(self) -> None:
        """Re-raise an error of the background thread now, without waiting."""
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "BackgroundWorker[T]":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_ahead(items: Iterable[T], depth: int, name: str = "featstore-read-ahead") -> Iterator[T]:
    """Iterate `items` on a background thread, up to `depth` ahead of the caller."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if not _put(q, item, stop):
                    return
            last: Any = _DONE
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer's thread
            last = e
        _put(q, last, stop)

    t = threading.Thread(target=work, name=name, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


def parallel_map(items: list[T], fn: Callable[[T], bool], jobs: int, on_done: Callable[[T], None] | None = None,
                 keep_going: bool = False) -> list[T]:
    """Run `fn` over `items` on up to `jobs` threads; returns the items for which it returned True. The first
    error cancels what has not started (unless `keep_going`) and is raised."""
    ok: list[T] = []
    if not items:
        return ok
    with ThreadPoolExecutor(max(1, min(jobs, len(items)))) as pool:
        futures = {pool.submit(fn, it): it for it in items}
        try:
            for fut in as_completed(futures):
                it = futures[fut]
                if fut.result():
                    ok.append(it)
                if on_done is not None:
                    on_done(it)
        except BaseException:
            if not keep_going:
                for f in futures:
                    f.cancel()
            raise
    return ok
