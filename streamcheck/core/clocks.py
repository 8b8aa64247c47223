"""Happens-before between streams: one vector clock per stream, one query.

As in ``torch/cuda/_sanitizer.py``: recording an event snapshots the recording stream's clock;
waiting on it merges the snapshot into the waiting stream's clock (pointwise max). A
*handoff* (an engine declaring "this tensor is complete on my stream now") ticks the producing
stream's own entry and returns a :class:`Mark`. The one query, :meth:`HappensBefore.ordered`,
asks whether a stream has waited for an event recorded after that mark.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

StreamKey = tuple[int, int]  # (device, stream id)


@dataclass(frozen=True, slots=True)
class Mark:
    """A point in a stream's history: its own clock entry after a handoff."""

    stream: StreamKey
    tick: int


class HappensBefore:
    """Thread-safe vector clocks keyed by stream; event snapshots keyed by an event id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clocks: dict[StreamKey, dict[StreamKey, int]] = {}
        self._events: dict[int, dict[StreamKey, int]] = {}

    def mark(self, stream: StreamKey) -> Mark:
        with self._lock:
            clock = self._clocks.setdefault(stream, {})
            clock[stream] = clock.get(stream, 0) + 1
            return Mark(stream, clock[stream])

    def record(self, event_id: int, stream: StreamKey) -> None:
        with self._lock:
            self._events[event_id] = dict(self._clocks.get(stream, {}))

    def wait(self, stream: StreamKey, event_id: int) -> None:
        with self._lock:
            snapshot = self._events.get(event_id)
            if snapshot is None:
                return  # waiting on a never-recorded event orders nothing
            clock = self._clocks.setdefault(stream, {})
            for key, tick in snapshot.items():
                if tick > clock.get(key, 0):
                    clock[key] = tick

    def ordered(self, stream: StreamKey, mark: Mark) -> bool:
        """Is work queued on ``stream`` now ordered after ``mark``?"""
        if stream == mark.stream:
            return True  # a stream runs in order
        with self._lock:
            return self._clocks.get(stream, {}).get(mark.stream, 0) >= mark.tick

    def forget_event(self, event_id: int) -> None:
        with self._lock:
            self._events.pop(event_id, None)
