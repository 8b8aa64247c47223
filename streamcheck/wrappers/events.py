"""Hooks on events, host waits and devices that feed the happens-before clocks and the book.

``torch.cuda.Event.record(stream=None)`` and ``.wait(stream=None)`` are the two places every
event ordering passes through in PyTorch (``Stream.wait_event``, ``wait_stream`` and
``record_event`` call them); the simulator's events have the same two methods. Until the first
declared access the clocks have nothing to order against (``Auditor.ordering`` is False) and
the clock hooks cost one attribute read; after it, the stream a call applies to is read and the
clocks updated.

A hook's own bookkeeping never breaks the call it wraps: whatever it cannot read (a device
given in a form it does not know, an object without the expected attributes) is said once
(:func:`~streamcheck.wrappers.launches.warn_cannot_audit`) and the call's result stands.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from streamcheck.core import ids
from streamcheck.core.clocks import SNAPSHOT_ATTR, STREAM_CLOCKS_ATTR
from streamcheck.core.errors import StreamHazardError
from streamcheck.core.ids import StreamRef
from streamcheck.runtime.reader import StreamReader
from streamcheck.wrappers import speedups
from streamcheck.wrappers.gate import Gate
from streamcheck.wrappers.launches import warn_cannot_audit
from streamcheck.wrappers.registry import PatchRegistry
from streamcheck.wrappers.streams import DeviceHome

_BOUND = "_streamcheck_event_device"


def hook_event_record(registry: PatchRegistry, gate: Gate, event_class: type,
                      reader: StreamReader) -> None:
    """``Event.record``, hooked from the start: an event already bound to a device recorded
    on a stream of another (``event-device-mismatch``, checked before the record runs), and,
    once the clocks are live, the snapshot they keep.

    ``reader.event_device(event)`` is the device the event is bound to (asked once, after its
    first record, and kept on the event). A record on the current stream (``stream=None``)
    uses the thread's current device: ``reader.current_device()`` (torch's C read, called
    directly: no Python frame on this path), or ``reader.event_thread_device(event)`` where
    that depends on the event (the simulator's machine).
    """
    stream_key_of = reader.event_stream_key()
    device_of = reader.event_device
    event_thread_device = reader.event_thread_device
    thread_device = reader.current_device if event_thread_device is None else None

    def make_record(original: Any) -> Any:
        @functools.wraps(original)
        def record(self: Any, stream: Any = None) -> Any:
            auditor = gate.auditor
            if auditor is None:
                return original(self, stream)
            bound = getattr(self, _BOUND, None)
            if bound is not None:
                try:
                    if stream is not None:
                        now = stream.device_index
                    elif thread_device is not None:
                        now = thread_device()
                    else:
                        now = event_thread_device(self)  # type: ignore[misc]
                    if now != bound:
                        key = stream_key_of(self, stream)
                        auditor.event_on_wrong_device(bound, _ref(key, stream))
                except StreamHazardError:
                    raise
                except Exception as exc:
                    warn_cannot_audit("Event.record", exc)
            result = original(self, stream)
            try:
                if bound is None:
                    with contextlib.suppress(AttributeError, TypeError):
                        setattr(self, _BOUND, device_of(self))
                if auditor.ordering:
                    auditor.event_recorded(self, stream_key_of(self, stream))
            except Exception as exc:
                warn_cannot_audit("Event.record", exc)
            return result

        compiled = _clock_keeping_core(reader)
        # the compiled hook binds a first-recorded event to the device it was recorded on
        # (torch's rule); a runtime whose events say otherwise keeps the Python hook
        if compiled is None or thread_device is None or not reader.event_takes_stream_device:
            return record
        # In C, the record of a bound event on its own device goes straight to torch, and
        # with the clocks live keeps its snapshot there too (on the current stream: read
        # through ``reader.current_stream``, as ``stream_key_of`` reads it); every other one
        # goes to ``record`` above.

        def snapshot(self: Any, stream: Any = None) -> None:
            """The clocks went live during a record let through in C: keep its snapshot."""
            auditor = gate.auditor
            if auditor is not None and auditor.ordering:
                try:
                    auditor.event_recorded(self, stream_key_of(self, stream))
                except Exception as exc:
                    warn_cannot_audit("Event.record", exc)

        hook = compiled.GuardedCall(compiled.EVENT_RECORD, gate, None, None, original, record,
                                    thread_device, _BOUND, snapshot, reader.current_stream)
        functools.update_wrapper(hook, original)
        return hook

    registry.patch(event_class, "record", make_record)


def _clock_keeping_core(reader: StreamReader, kind: str = "") -> Any:
    """The chosen compiled core where its hooks may keep and read the clocks themselves (and
    have ``kind``, a GuardedCall kind, when one is named), else None: they find an event's
    snapshot and a stream's clock where ``clocks.py`` keeps them, under the key a stream
    object gives (not a runtime's own ``event_stream``)."""
    compiled = speedups.active()
    if (compiled is None or reader.event_stream is not None
            or getattr(compiled, "CLOCK_ATTR", None) != SNAPSHOT_ATTR
            or getattr(compiled, "STREAM_CLOCKS", None) != STREAM_CLOCKS_ATTR
            or (kind and not hasattr(compiled, kind))):
        return None
    return compiled


def _ref(key: tuple[int, int], stream: Any) -> StreamRef:
    return StreamRef(key[0], key[1], int(getattr(stream, "cuda_stream", 0) or 0))


def hook_set_device(registry: PatchRegistry, gate: Gate, namespace: Any,
                    reader: StreamReader, home: DeviceHome | None = None) -> None:
    """Remember which device each thread last made current, and where (set_device is rare):
    a stream or event on the wrong device is explained by it. An engine thread's device is
    also ``home``'s: the device the namespace's helper threads should be working on."""
    current_device = reader.current_device

    def make(original: Any) -> Any:
        @functools.wraps(original)
        def set_device(device: Any) -> Any:
            result = original(device)
            auditor = gate.auditor
            if auditor is not None:
                try:
                    ident, now = threading.get_ident(), current_device()
                    auditor.device_set(ident, now, ids.site_capture(skip=1), time.time())
                    if home is not None and auditor.is_engine_thread(ident):
                        home.chosen(now)
                except Exception as exc:
                    warn_cannot_audit("set_device", exc)
            return result

        return set_device

    registry.patch(namespace, "set_device", make)


def hook_event_wait(registry: PatchRegistry, gate: Gate, event_class: type,
                    reader: StreamReader) -> None:
    """``Event.wait``, installed at the first declared access: the waiting stream's clock
    takes in the event's snapshot (:func:`hook_event_record` keeps the snapshots)."""
    stream_key_of = reader.event_stream_key()

    def make_wait(original: Any) -> Any:
        @functools.wraps(original)
        def wait(self: Any, stream: Any = None) -> Any:
            auditor = gate.auditor
            if auditor is not None and auditor.ordering:
                try:
                    auditor.event_waited(stream_key_of(self, stream), self)
                except Exception as exc:
                    warn_cannot_audit("Event.wait", exc)
            return original(self, stream)

        compiled = _clock_keeping_core(reader)
        if compiled is None:
            return wait
        # In C, a wait on a given stream whose clock already holds the event's snapshot (the
        # common case: it adds nothing) goes straight to torch; every other one to ``wait``.
        hook = compiled.GuardedCall(compiled.EVENT_WAIT, gate, None, None, original, wait,
                                    None, SNAPSHOT_ATTR, None)
        functools.update_wrapper(hook, original)
        return hook

    registry.patch(event_class, "wait", make_wait)


def hook_wait_stream(registry: PatchRegistry, gate: Gate, stream_class: type,
                     reader: StreamReader) -> None:
    """``Stream.wait_stream(other)``, compiled core only: the edge it makes, without the two
    event hooks' work on the event torch makes for it.

    torch's own (``self.wait_event(other.record_event())``) makes a new event, records it on
    ``other`` and waits on it on ``self``: with the clocks live, the record hook binds the
    event and keeps ``other``'s clock on it, and the wait hook reads it back and compares it
    with ``self``'s, for an event nobody else ever sees. An engine step makes two of these a
    layer. Here, in C, ``other``'s clock is read before torch's call (everything its event
    will hold), torch's call runs with this thread's event hooks passing straight through, and
    ``self``'s clock takes ``other``'s in after it (:meth:`HappensBefore.take_in`, only where it
    does not hold it already). Streams of another class, and the Python core, keep torch's call
    as it is, the event hooks making the edge."""
    compiled = _clock_keeping_core(reader, "WAIT_STREAM")
    if compiled is None:
        return
    stream_key_of = reader.event_stream_key()

    def take_in(stream: Any, clock: Any) -> None:
        """The waiting stream's clock takes in what it did not hold (warned, never raised)."""
        auditor = gate.auditor
        if auditor is not None:
            try:
                auditor.stream_waited(stream_key_of(None, stream), clock)
            except Exception as exc:
                warn_cannot_audit("Stream.wait_stream", exc)

    def make(original: Any) -> Any:
        hook = compiled.GuardedCall(compiled.WAIT_STREAM, gate, stream_class, None, original,
                                    take_in, None, None, None)
        functools.update_wrapper(hook, original)
        return hook

    registry.patch(stream_class, "wait_stream", make)


def hook_host_waits(registry: PatchRegistry, gate: Gate, namespace: Any, stream_class: type,
                    event_class: type, reader: StreamReader) -> None:
    """Tell the clocks when the host waited for the device: ``namespace.synchronize(device)``,
    ``Stream.synchronize()``, ``Event.synchronize()``, and an ``Event.query()`` or
    ``Stream.query()`` that returned True (a poll that saw the work done: a connector's worker
    retires its copies this way, and the blocks they read are handed out again only after).
    Installed with the event hooks, at the first declared access; each costs one attribute
    read and a small merge, after the wait. Not seen: ``torch.accelerator.synchronize`` and
    ``torch.Stream.synchronize``; a buffer reused after one of those still looks raced with
    its previous use."""
    current_device = reader.current_device

    def live() -> Any:
        """The auditor, while its clocks order anything (None otherwise)."""
        auditor = gate.auditor
        return auditor if auditor is not None and auditor.ordering else None

    def make_device(original: Any) -> Any:
        @functools.wraps(original)
        def synchronize(device: Any = None) -> Any:
            result = original(device)
            hb = live()
            if hb is not None:
                try:
                    index = device_index_of(device)
                    hb.device_synchronized(current_device() if index is None else index)
                except Exception as exc:
                    warn_cannot_audit("synchronize", exc)
            return result

        return synchronize

    def stream_work(hb: Any, stream: Any) -> Any:
        return hb.stream_clock((int(stream.device_index), int(stream.stream_id)))

    def stream_done(hb: Any, clock: Any) -> None:
        hb.host_waited_for(clock)

    def event_work(hb: Any, event: Any) -> Any:
        # read before the wait, as a stream's clock is: the host waits for the record made
        # before its call, not for one another thread makes meanwhile
        return hb.event_snapshot(event)

    def event_done(hb: Any, snapshot: Any) -> None:
        hb.host_waited_for(snapshot)

    def after(label: str, work: Callable[[Any, Any], Any], done: Callable[[Any, Any], None],
              polled: bool) -> Any:
        """A maker for ``Stream``/``Event`` ``synchronize`` (``polled=False``: the host waited)
        or ``query`` (``polled=True``: the host saw the work done only when it returns True)
        that tells the clocks: what was queued when the call began (``work``) is done."""

        def make(original: Any) -> Any:
            @functools.wraps(original)
            def wrapper(self: Any) -> Any:
                hb = live()
                seen = None
                if hb is not None:
                    try:
                        seen = work(hb, self)
                    except Exception as exc:
                        warn_cannot_audit(label, exc)
                result = original(self)
                if seen is not None and (result or not polled):
                    try:
                        done(hb, seen)
                    except Exception as exc:  # the wait happened: its result stands
                        warn_cannot_audit(label, exc)
                return result

            return wrapper

        return make

    def waits(label: str, owner: type, polled: bool, kinds: tuple[str, str],
              bound: str | None) -> Any:
        """The maker for ``owner``'s ``synchronize`` or ``query``: in C with the compiled core,
        where it has the GuardedCall kinds ``kinds`` (the wait's, the poll's) and reads the
        clocks where clocks.py keeps them (a connector syncs its copy stream and polls or
        waits on an engine step's event at every job; an event's snapshot is its attribute
        ``bound``), else the Python hook, which also takes every call the C one does not (an
        object of another class, one it cannot read). A failure to take in a wait that
        returned is the Python hook's warning either way, the wait's result standing."""
        work, done = (stream_work, stream_done) if bound is None else (event_work, event_done)
        python = after(label, work, done, polled)
        compiled = _clock_keeping_core(reader, kinds[0])
        if compiled is None:
            return python

        def make(original: Any) -> Any:
            hook = compiled.GuardedCall(getattr(compiled, kinds[polled]), gate, owner, None,
                                        original, python(original), None, bound,
                                        functools.partial(warn_cannot_audit, label))
            functools.update_wrapper(hook, original)
            return hook

        return make

    stream_kinds, event_kinds = ("HOST_WAIT", "HOST_POLL"), ("EVENT_HOST_WAIT", "EVENT_HOST_POLL")
    registry.patch(namespace, "synchronize", make_device)
    registry.patch(stream_class, "synchronize",
                   waits("Stream.synchronize", stream_class, False, stream_kinds, None))
    registry.patch(event_class, "synchronize",
                   waits("Event.synchronize", event_class, False, event_kinds, SNAPSHOT_ATTR))
    registry.patch(event_class, "query",
                   waits("Event.query", event_class, True, event_kinds, SNAPSHOT_ATTR))
    if callable(getattr(stream_class, "query", None)):
        registry.patch(stream_class, "query",
                       waits("Stream.query", stream_class, True, stream_kinds, None))


def hook_record_stream(registry: PatchRegistry, gate: Gate, tensor_class: type,
                       key_of: Callable[[Any], tuple[int, int]]) -> None:
    """Tell the auditor when a tensor is handed to the caching allocator's stream tracking
    (``Tensor.record_stream``): its memory's next owner is ordered after that stream's work.
    Installed with the event hooks, at the first declared access."""

    def make(original: Any) -> Any:
        @functools.wraps(original)
        def record_stream(self: Any, stream: Any) -> Any:
            result = original(self, stream)
            auditor = gate.auditor
            if auditor is not None and auditor.ordering:
                try:
                    auditor.fenced_by_allocator(
                        key_of(self), (int(stream.device_index), int(stream.stream_id)))
                except Exception as exc:
                    warn_cannot_audit("Tensor.record_stream", exc)
            return result

        return record_stream

    registry.patch(tensor_class, "record_stream", make)


def device_index_of(device: Any) -> int | None:
    """A device as ``synchronize(device)`` takes it, as an index (None: the current device):
    ``None``, ``1``, ``"cuda"``, ``"cuda:1"``, ``torch.device("cuda", 1)``."""
    if device is None or isinstance(device, int):
        return device
    if isinstance(device, str):
        _kind, sep, number = device.partition(":")
        return int(number) if sep else None
    index = getattr(device, "index", None)
    return None if index is None else int(index)

