"""A bounded timeline of the connector's calls: where a request's time goes in a real engine.

The connector's metrics give averages (a load's issue, device time, first poll); they cannot
say what ran between two of its calls, on which thread. With ``trace`` set in the connector's
config (how many records to keep, oldest dropped first), every engine call the connector gets
and every job its worker thread runs leaves a record here: nanoseconds since the runtime
started, the thread's name, what, and a detail (a request, a count). Off (``trace=0``, the
default) a record costs one attribute check.
"""

from __future__ import annotations

import threading
import time
from collections import deque

Record = tuple[int, str, str, str]


class Timeline:
    """Records ``(ns since start, thread, what, detail)``; appends are thread-safe (deque)."""

    def __init__(self, size: int = 0) -> None:
        if size < 0:
            raise ValueError("a timeline keeps zero or more records")
        self._records: deque[Record] | None = deque(maxlen=size) if size else None
        self._start = time.perf_counter_ns()

    @property
    def on(self) -> bool:
        return self._records is not None

    def note(self, what: str, *detail: object) -> None:
        """Record ``what``; ``detail``'s parts are joined by spaces only when recording (a
        call on a hot path costs no formatting while the timeline is off)."""
        records = self._records
        if records is not None:
            records.append((time.perf_counter_ns() - self._start,
                            threading.current_thread().name, what,
                            " ".join(map(str, detail))))

    def records(self) -> list[Record]:
        """The kept records, oldest first (a copy: the timeline goes on)."""
        return list(self._records) if self._records is not None else []
