"""Happens-before between streams: one vector clock per stream, one query.

As in ``torch/cuda/_sanitizer.py``: recording an event snapshots the recording stream's clock;
waiting on it merges the snapshot into the waiting stream's clock (pointwise max). A
*handoff* (an engine declaring "this tensor is complete on my stream now") ticks the producing
stream's own entry and returns a :class:`Mark`. The one query, :meth:`HappensBefore.ordered`,
asks whether a stream has waited for an event recorded after that mark.

Cost, since every ``Event.record``/``wait`` of the process passes through here: nothing at all
until the first declared access (a handoff, or a launch's reads or writes; :attr:`active`:
with no mark there is nothing to order against). After that, clocks are never modified in
place but replaced, so a record keeps a reference to the recording stream's current clock (no
copy) and a wait that adds nothing new allocates nothing.
The snapshot lives on the event object itself, so it dies with the event and a recycled
``id()`` can never hand a new event an old snapshot.

The host waiting for the device orders things too: after ``torch.cuda.synchronize()``,
``stream.synchronize()`` or ``event.synchronize()`` returns, the work it waited for is done,
and anything queued afterwards, on any stream, runs after it. A *done* clock keeps what the host
has waited for; :meth:`HappensBefore.ordered` consults it as well. (Without it, a buffer freed
after a full synchronize and handed out again at the same address looks raced with its
previous life.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamcheck.core import locks

StreamKey = tuple[int, int]  # (device, stream id)
Clock = dict[StreamKey, int]  # never mutated once published
_EMPTY: Clock = {}
# Where an event's snapshot and the streams' clocks live. The compiled event hooks
# (streamcheck/_speedups.c) read and keep them there too, while these names match theirs.
SNAPSHOT_ATTR = "_streamcheck_clock"
STREAM_CLOCKS_ATTR = "_clocks"
_ATTR = SNAPSHOT_ATTR


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see ids.StreamRef
class Mark:
    """A point in a stream's history: its own clock entry after a handoff."""

    stream: StreamKey
    tick: int


class HappensBefore:
    """Vector clocks keyed by stream; event snapshots kept on the events."""

    def __init__(self) -> None:
        self._lock = locks.make_lock()
        self._clocks: dict[StreamKey, Clock] = {}
        self._events: dict[object, Clock] = {}  # events that take no attribute (plain ids)
        self._done: Clock = {}  # what the host has waited for: done before anything later
        self.active = False
        # Called once, at the first mark: whoever feeds events here may start only then.
        # ``on_active`` runs inside the lock, before any record or wait can see the clocks
        # live (it must be quick: a flag); ``on_activate`` after it (installing hooks).
        self.on_active: Callable[[], None] | None = None
        self.on_activate: Callable[[], None] | None = None

    def mark(self, stream: StreamKey) -> Mark:
        with self._lock:
            clock = dict(self._clocks.get(stream, _EMPTY))
            clock[stream] = clock.get(stream, 0) + 1
            self._clocks[stream] = clock
            first = not self.active
            self.active = True
            if first and self.on_active is not None:
                self.on_active()
            mark = Mark(stream, clock[stream])
        if first and self.on_activate is not None:
            self.on_activate()
        return mark

    def record(self, event: Any, stream: StreamKey) -> None:
        snapshot = self._clocks.get(stream, _EMPTY)
        try:
            setattr(event, _ATTR, snapshot)
        except (AttributeError, TypeError):
            self._events[_key(event)] = snapshot

    def snapshot_of(self, event: Any) -> Clock | None:
        """The clock ``event``'s last live record kept (None: never recorded live)."""
        snapshot = getattr(event, _ATTR, None)
        return self._events.get(_key(event)) if snapshot is None else snapshot

    def wait(self, stream: StreamKey, event: Any) -> None:
        snapshot = self.snapshot_of(event)
        if snapshot is None:
            return  # waiting on a never-recorded event orders nothing
        self.take_in(stream, snapshot)

    def take_in(self, stream: StreamKey, snapshot: Clock) -> None:
        """``stream`` waited for the work behind ``snapshot`` (a clock, as an event keeps it):
        its clock takes in every entry (pointwise max). What a wait does with its event's
        snapshot, and what ``wait_stream`` does with the waited stream's clock."""
        if not snapshot:
            return
        # Without the lock (clocks are replaced, never changed): the common wait, on an event
        # whose snapshot the stream has already taken in entry for entry, compares in C.
        if snapshot.items() <= self._clocks.get(stream, _EMPTY).items():
            return
        with self._lock:
            own = self._clocks.get(stream, _EMPTY)
            if all(own.get(key, 0) >= tick for key, tick in snapshot.items()):
                return
            merged = dict(own)
            for key, tick in snapshot.items():
                if tick > merged.get(key, 0):
                    merged[key] = tick
            self._clocks[stream] = merged

    # ---- the host waits ----------------------------------------------------------------------

    def _host_waited(self, clocks: list[Clock]) -> None:
        with self._lock:
            done = dict(self._done)
            for clock in clocks:
                for key, tick in clock.items():
                    if tick > done.get(key, 0):
                        done[key] = tick
            self._done = done

    def done_clock(self) -> Clock:
        """What the host has waited for (never modified in place: a snapshot). Work behind
        a mark it covers is ordered before anything queued from now on, on any stream, so a
        declared access at such a mark can no longer be raced with and need not be kept."""
        return self._done

    def clock_of(self, stream: StreamKey) -> Clock:
        """The stream's clock now (never modified in place: a snapshot)."""
        return self._clocks.get(stream, _EMPTY)

    def host_waited_for(self, clock: Clock) -> None:
        """The host saw the work behind ``clock`` (a stream's, read before the wait) done:
        ``stream.synchronize()`` returned, or ``stream.query()`` said True. Read before the
        wait, not after: work another thread queues on the stream meanwhile
        is not what the host waited for."""
        if clock.items() <= self._done.items():
            return  # waited for already, entry for entry: nothing to merge (a poll repeated)
        self._host_waited([clock])

    def device_synchronized(self, device: int) -> None:
        """``torch.cuda.synchronize(device)`` returned: every stream of the device is done."""
        self._host_waited([c for key, c in list(self._clocks.items()) if key[0] == device])

    def event_synchronized(self, event: Any) -> None:
        """``event.synchronize()`` returned: what the event's stream had done is done."""
        snapshot = self.snapshot_of(event)
        if snapshot:
            self._host_waited([snapshot])

    def all_ordered(self, stream: StreamKey, accesses: Any) -> bool:
        """:meth:`ordered` of every access's ``mark`` (a launch's reads), in one call: a
        connector checks its reads at every launch."""
        done, own = self._done, self._clocks.get(stream, _EMPTY)
        for access in accesses:
            mark = access.mark
            at, tick = mark.stream, mark.tick
            if at != stream and done.get(at, 0) < tick and own.get(at, 0) < tick:
                return False
        return True

    def ordered(self, stream: StreamKey, mark: Mark) -> bool:
        """Is work queued on ``stream`` now ordered after ``mark``?"""
        if stream == mark.stream:
            return True  # a stream runs in order
        if self._done.get(mark.stream, 0) >= mark.tick:
            return True  # the host waited for it: done before anything queued since
        return self._clocks.get(stream, _EMPTY).get(mark.stream, 0) >= mark.tick


def _key(event: Any) -> object:
    return event if isinstance(event, int) else id(event)
