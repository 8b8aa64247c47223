"""Stream provenance: who created each stream, and which threads made it current, when.

The hooks on stream creation and ``set_stream`` feed this book; rules read it to tell a stream
that leaked in from another thread (``foreign-stream``) from a cache that merely went stale in
this one (``stale-stream-cache``).

``set_stream`` runs twice per ``with torch.cuda.stream(s)`` and engines switch streams many
times per step, so recording a switch must cost what the decision needs and nothing more: one
small tuple appended to a bounded log and one per-thread slot update, with the stream object,
the thread ident and the code objects and line numbers of the two calling frames (with the
compiled hooks, written into a ring of plain slots without making the tuple, and a
torch.cuda.Stream kept by its key so that no stream object outlives its switch: see
:data:`make_switch_log`). Thread names, roles, file names and full :class:`StreamEvent`
records are made only when a rule asks, which happens only for a launch that already looks
wrong.

Runtimes reuse stream ids (PyTorch's pool hands out 32 per device and priority, round robin):
a creation starts a new life for its id, and a query never looks past the latest creation.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from streamcheck.core.ids import Stack, StreamRef, ThreadRef, frames_of
from streamcheck.core.records import StreamEvent
from streamcheck.core.roles import main_thread_role

LOG_LENGTH = 16384  # stream switches kept; older ones only ever explain old launches

# A switch record, as the hooks append it: (stream object, thread ident, via, code, offset,
# code, offset) with the code objects and instruction offsets of the two calling frames. The
# compiled log keeps a torch.cuda.Stream by its key instead of the object (no stream outlives
# its switch: streamcheck/_speedups.c, "a switch kept by its stream's key"), and reads it back
# as (device index, stream id, device type, stream type) in the stream's place.
# Records made from a StreamEvent (creations, tests) are (StreamRef, ident, via, stack or site,
# time, name, kind).
CREATED = "created"


def deque_log(capacity: int) -> Any:
    """The switch log of the Python hooks: a deque of the records they append."""
    return deque(maxlen=capacity)


# What a new book keeps its switches in: anything with ``append``, ``clear``, ``len`` and
# iteration oldest first, as a bounded deque (and, optionally, ``newest_first()``).
# streamcheck/wrappers/speedups.py sets the compiled ``SwitchLog`` with the compiled hooks: the
# set_stream hook writes a switch into its slot with no tuple or integers made, and none freed
# (what a deque of tuples costs in an engine, with caches cold between switches:
# scripts/bench_hook_cache.py).
make_switch_log: Callable[[int], Any] = deque_log

# What a new book keeps its creations in, under each stream's key: anything with a dict's
# ``[key] = value``, ``get`` and ``clear``. streamcheck/wrappers/speedups.py sets the compiled
# ``CreationTable`` with the compiled hooks: the creation hook writes a creation into it as
# plain fields, and the record is made only when a finding reads it.
make_creation_table: Callable[[], Any] = dict


def _is_full(record: tuple[Any, ...]) -> bool:
    return len(record) == 7 and isinstance(record[3], tuple)


def _is_creation(record: tuple[Any, ...]) -> bool:
    """A stream's creation starts its present life: switches before it were another stream's."""
    return _is_full(record) and record[6] == CREATED


def site_stack(record: tuple[Any, ...]) -> Stack:
    """The frames where a switch was made, innermost first, without the audit's own."""
    return frames_of(record[3]) if _is_full(record) else frames_of(record[3:7])


def _key(record: tuple[Any, ...]) -> tuple[int, int]:
    stream = record[0]
    if isinstance(stream, StreamRef):
        return stream.key
    if type(stream) is tuple:  # kept by its key
        return (stream[0], stream[1])
    return (int(stream.device_index), int(stream.stream_id))


def _handle(stream: Any) -> int:
    """The runtime's handle of a record's stream. One kept by its key is rebuilt by its type
    from the key, as torch's ``current_stream()`` wraps an existing stream (only for a
    finding's event); 0 where that fails."""
    if type(stream) is tuple:
        device, stream_id, device_type, kind = stream
        try:
            stream = kind(stream_id=stream_id, device_index=device, device_type=device_type)
        except Exception:  # a report without a handle beats no report
            return 0
    return int(getattr(stream, "handle", 0) or getattr(stream, "cuda_stream", 0) or 0)


class StreamBook:
    """History of stream switches and creations, newest last, bounded.

    Writing is one ``append`` of the log (atomic, no lock): :attr:`record_switch` is that bound
    method, called by the Python hook with a ready tuple (the compiled hook fills the compiled
    log's slot without calling it). Reading scans the log backwards, which
    only rules do, and only for a launch that already looks wrong.
    """

    def __init__(self, role_of: Callable[[int], str] = main_thread_role) -> None:
        self._role_of = role_of  # a thread's role, for the events a query hands back
        self._lock = threading.Lock()
        self._log = make_switch_log(LOG_LENGTH)
        self.record_switch = self._log.append
        # a creation as a StreamEvent (the Python hook, a test) or as the compiled hook's
        # record (stream, ident, via, site, time, thread name, CREATED), made an event by
        # origin(); a dict, or the compiled core's CreationTable (make_creation_table)
        self._created: Any = make_creation_table()
        # the latest set_device of each thread: (device, where, time); the current device is
        # per thread in CUDA, and a wrong one explains a stream or event on the wrong device
        self._device_set: dict[int, tuple[int, Stack, float]] = {}

    def device_set(self, thread_ident: int, device: int, where: Stack, when: float) -> None:
        """``thread_ident`` made ``device`` its current device (set_device is rare: a dict
        store)."""
        self._device_set[thread_ident] = (device, where, when)

    def last_device_set(self, thread_ident: int) -> tuple[int, Stack, float] | None:
        return self._device_set.get(thread_ident)

    def record(self, event: StreamEvent) -> None:
        """A full event (a stream creation, or one built by a caller or a test). The compiled
        creation hook writes the same into ``_created`` itself, and marks it in the log
        (``CreationHook`` in streamcheck/_speedups.c, ``CreationTable`` in
        streamcheck/_creations.c): a change to what is kept here is a change there."""
        s = event.stream
        if event.kind == CREATED:
            with self._lock:
                self._created[s.key] = event
        self._log.append((s, event.thread.ident, event.via, event.stack, event.time,
                          event.thread.name, event.kind))

    # ---- reading: only for launches that already look wrong -----------------------------

    def _records(self) -> Iterator[tuple[Any, ...]]:
        """Newest first, from one copy taken now, so writers never wait: the compiled log
        copies its slots and makes a record only when the reader reaches it (the rules stop
        at their first match); a deque is copied whole."""
        newest_first = getattr(self._log, "newest_first", None)
        if newest_first is not None:
            return newest_first()
        return reversed(list(self._log))

    def origin(self, stream: StreamRef) -> StreamEvent | None:
        """The creation of this stream, if a hook saw it."""
        with self._lock:
            event = self._created.get(stream.key)
        if isinstance(event, tuple):
            return _event(event, self._role_of)
        # a hook keeps the creating frames as a cheap site; a report wants them as a stack
        return None if event is None else replace(event, stack=frames_of(event.stack))

    def made_current_elsewhere(self, stream: StreamRef, thread_ident: int) -> StreamEvent | None:
        """The latest time another thread made this stream current (in its present life)."""
        for record in self._records():
            if _key(record) != stream.key:
                continue
            if _is_creation(record):
                return None
            if record[1] != thread_ident:
                return _event(record, self._role_of)
        return None

    def _latest_of(self, thread_ident: int, device: int) -> tuple[Any, ...] | None:
        for record in self._records():
            if record[1] == thread_ident and _key(record)[0] == device and not _is_creation(
                    record):
                return record
        return None

    def is_current_in(self, stream: StreamRef, thread_ident: int) -> bool:
        """Whether the hooks last saw ``thread_ident`` make this stream current on its device."""
        record = self._latest_of(thread_ident, stream.device)
        return record is not None and _key(record) == stream.key

    def current_of(self, thread_ident: int, device: int) -> StreamEvent | None:
        """The last stream the hooks saw ``thread_ident`` make current on ``device``."""
        record = self._latest_of(thread_ident, device)
        return _event(record, self._role_of) if record is not None else None

    def clear(self) -> None:
        with self._lock:
            self._log.clear()
            self._created.clear()
            self._device_set.clear()


def _event(record: tuple[Any, ...], role_of: Callable[[int], str]) -> StreamEvent:
    stream, ident, via = record[0], record[1], record[2]
    device, stream_id = _key(record)
    handle = _handle(stream)
    name, when = (record[5], record[4]) if _is_full(record) else (None, 0.0)
    if name is None:
        thread = threading._active.get(ident)  # type: ignore[attr-defined]
        name = thread.name if thread is not None else f"thread {ident:#x} (ended)"
    return StreamEvent(
        kind=CREATED if _is_creation(record) else "made-current",
        stream=StreamRef(device, stream_id, handle),
        thread=ThreadRef(ident, name, role_of(ident)), time=when,
        stack=site_stack(record), via=via,
    )
