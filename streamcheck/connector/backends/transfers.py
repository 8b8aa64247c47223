"""Transfer handles, the small IO thread pool behind the asynchronous backends, and counters.

Every store operation runs as a function that RETURNS a :class:`TransferResult` (it never lets an
exception escape), so a handle only has to report the future's value: ``DONE`` or ``FAILED``
with the reason, or ``PENDING`` while it runs. Work cancelled by ``close`` reads ``FAILED``.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable

from streamcheck.connector.backends.base import (
    PENDING_RESULT,
    BackendError,
    TransferResult,
    TransferState,
)

STAT_NAMES = ("bytes_saved", "bytes_loaded", "hits", "misses", "failures", "evictions", "blocks")


class CompletedTransfer:
    """A transfer that finished before its handle was returned (host memcpy, early errors)."""

    __slots__ = ("_result",)

    def __init__(self, result: TransferResult) -> None:
        self._result = result

    def poll(self) -> TransferResult:
        return self._result

    def wait(self, timeout: float | None = None) -> TransferResult:
        return self._result

    def __repr__(self) -> str:
        return f"CompletedTransfer({self._result})"


class FutureTransfer:
    """A transfer running on an IO thread; its future yields a ``TransferResult``."""

    __slots__ = ("_future",)

    def __init__(self, future: cf.Future[TransferResult]) -> None:
        self._future = future

    def poll(self) -> TransferResult:
        if not self._future.done():
            return PENDING_RESULT
        if self._future.cancelled():
            return TransferResult(TransferState.FAILED, error="cancelled: backend closed")
        return self._future.result()

    def wait(self, timeout: float | None = None) -> TransferResult:
        cf.wait((self._future,), timeout=timeout)
        return self.poll()

    def __repr__(self) -> str:
        return f"FutureTransfer({self.poll()})"


class Counters:
    """Thread-safe counters behind ``stats()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._values[name] += delta

    def lookup(self, found: list[bool]) -> list[bool]:
        """Count a lookup's hits and misses; returns ``found`` for the caller to hand back."""
        hits = sum(found)
        self.add(hits=hits, misses=len(found) - hits)
        return found

    def snapshot(self) -> dict[str, int | float]:
        with self._lock:
            return dict(self._values)


def failed(counters: Counters, error: str) -> CompletedTransfer:
    """A finished ``FAILED`` transfer, counted."""
    counters.add(failures=1)
    return CompletedTransfer(TransferResult(TransferState.FAILED, error=error))


class IOPool:
    """A few IO threads that run store operations and count their outcome.

    A pool rather than one thread per call: the number of concurrent store operations stays
    bounded (disk queue depth, Redis connections), and ``close`` can drain or cancel them all.
    """

    def __init__(self, threads: int, name: str, counters: Counters) -> None:
        if threads < 1:
            raise ValueError("io_threads must be >= 1")
        self._executor = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._counters = counters
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, op: Callable[[], int], stat: str) -> FutureTransfer | CompletedTransfer:
        """Run ``op`` (returns payload bytes moved, raises on failure) on an IO thread."""
        with self._lock:
            if self._closed:
                return failed(self._counters, "backend closed")
            future = self._executor.submit(self._run, op, stat)
        future.add_done_callback(self._count_cancelled)
        return FutureTransfer(future)

    def _run(self, op: Callable[[], int], stat: str) -> TransferResult:
        try:
            nbytes = op()
        except BackendError as exc:
            self._counters.add(failures=1)
            return TransferResult(TransferState.FAILED, error=str(exc))
        except Exception as exc:  # a store op must end FAILED, never leave a handle hanging
            self._counters.add(failures=1)
            return TransferResult(TransferState.FAILED, error=f"{type(exc).__name__}: {exc}")
        self._counters.add(**{stat: nbytes})
        return TransferResult(TransferState.DONE, nbytes=nbytes)

    def _count_cancelled(self, future: cf.Future[TransferResult]) -> None:
        if future.cancelled():
            self._counters.add(failures=1)

    def close(self, drain: bool = True) -> None:
        """Stop accepting work; finish queued work (``drain``) or cancel what has not started.

        Running operations always finish: each is bounded by its store's own timeouts.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=not drain)
