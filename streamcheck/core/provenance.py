"""Stream provenance: who created each stream, and which threads made it current, when.

The hooks on stream creation and ``set_stream`` feed this book; rules read it to tell a stream
that leaked in from another thread (``foreign-stream``) from a cache that merely went stale in
this one (``stale-stream-cache``). Runtimes reuse stream ids (PyTorch's pool hands out 32 per
device and priority, round robin), so history is kept per id, newest last, and bounded.
"""

from __future__ import annotations

import threading
from collections import deque

from streamcheck.core.ids import StreamRef
from streamcheck.core.records import StreamEvent

HISTORY_PER_STREAM = 32


class StreamBook:
    """Thread-safe history of stream events, keyed by (device, stream id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._history: dict[tuple[int, int], deque[StreamEvent]] = {}
        self._current: dict[int, dict[int, StreamEvent]] = {}

    def record(self, event: StreamEvent) -> None:
        key = event.stream.key
        with self._lock:
            history = self._history.get(key)
            if history is None or event.kind == "created":
                # A creation starts a new life for a (possibly reused) stream id.
                history = self._history[key] = deque(maxlen=HISTORY_PER_STREAM)
            history.append(event)
            if event.kind == "made-current":
                per_device = self._current.setdefault(event.thread.ident, {})
                per_device[event.stream.device] = event

    def origin(self, stream: StreamRef) -> StreamEvent | None:
        """The creation of this stream, if a hook saw it."""
        with self._lock:
            for event in self._history.get(stream.key, ()):
                if event.kind == "created":
                    return event
        return None

    def made_current_elsewhere(self, stream: StreamRef, thread_ident: int) -> StreamEvent | None:
        """The latest time another thread made this stream current, or None."""
        with self._lock:
            for event in reversed(self._history.get(stream.key, ())):
                if event.kind == "made-current" and event.thread.ident != thread_ident:
                    return event
        return None

    def is_current_in(self, stream: StreamRef, thread_ident: int) -> bool:
        """Whether the hooks last saw ``thread_ident`` make this stream current on its device."""
        with self._lock:
            event = self._current.get(thread_ident, {}).get(stream.device)
        return event is not None and event.stream.key == stream.key

    def current_of(self, thread_ident: int, device: int) -> StreamEvent | None:
        """The last stream the hooks saw ``thread_ident`` make current on ``device``."""
        with self._lock:
            return self._current.get(thread_ident, {}).get(device)

    def clear(self) -> None:
        with self._lock:
            self._history.clear()
            self._current.clear()
