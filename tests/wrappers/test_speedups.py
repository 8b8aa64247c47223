"""The compiled hooks (``streamcheck._speedups``) record and decide what the Python ones do.

The launch wrappers' decisions are compared case by case in ``test_fast_path.py`` (both
cores); here: the switch record, how a compiled wrapper presents itself, and the ``core``
setting. The compiled cases are skipped, and say so, where the extension is not built.
"""

from __future__ import annotations

import _thread
import functools
import gc
import inspect
import itertools
import sys
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest

import streamcheck
from streamcheck import installer
from streamcheck.core.auditor import Auditor
from streamcheck.core.clocks import SNAPSHOT_ATTR
from streamcheck.core.errors import StreamHazardError
from streamcheck.core.ids import StreamRef
from streamcheck.core.modes import ConfigError, Mode
from streamcheck.core.provenance import site_stack
from streamcheck.runtime.reader import StreamReader
from streamcheck.settings import AuditSettings
from streamcheck.wrappers import launches, speedups
from streamcheck.wrappers.events import (
    hook_event_record,
    hook_event_wait,
    hook_host_waits,
    hook_wait_stream,
)
from streamcheck.wrappers.generated import checked_by_compiled_code
from streamcheck.wrappers.launches import wrap_stream_method
from streamcheck.wrappers.state import ROLES
from streamcheck.wrappers.streams import DeviceHome, hook_stream_creation, made_current_hook
from streamcheck.wrappers.torch_distributed import wrap_tensor_function
from tests.core.fakes import in_thread, made_current
from tests.wrappers.compiled_parts import young_objects_added

needs_build = pytest.mark.skipif(not speedups.built(),
                                 reason="streamcheck._speedups is not built here")


class Stream:
    device_index, stream_id, cuda_stream = 0, 5, 0x7F00_0005


def switch(hook, stream):
    return hook(stream)  # the caller the record must name


STREAM = Stream()
RECORD_LINE = next(n for n, text in enumerate(Path(__file__).read_text().splitlines(), 1)
                   if text.rstrip().endswith("# RECORD_LINE") and "next(" not in text)


def record_of(core: str, monkeypatch) -> tuple:
    monkeypatch.setenv("STREAMCHECK_CORE", core)
    aud = installer.install("record")
    seen = []
    hook = made_current_hook(installer._gate, lambda s: seen.append(s) or "set", "ns.set_stream")
    stream = STREAM
    for _ in range(2):  # the same call site both times
        assert switch(hook, stream) == "set"  # RECORD_LINE
    record = aud.book._log[-1]
    installer.uninstall()
    assert seen == [stream, stream]
    return type(hook).__name__, record


@needs_build
def test_a_switch_is_recorded_the_same_by_both_hooks(monkeypatch):
    py_type, py_record = record_of("python", monkeypatch)
    c_type, c_record = record_of("compiled", monkeypatch)
    assert (py_type, c_type) == ("function", "SetStreamHook")
    assert c_record[3] is switch.__code__ and c_record[5] is record_of.__code__
    assert c_record[:3] == py_record[:3]  # stream, thread, via
    # the frames as a report shows them (the offset C sees may be an earlier instruction of
    # the same call: 3.11 updates it lazily; the line is what counts)
    assert site_stack(c_record) == site_stack(py_record)
    assert [line for _file, line, _name in site_stack(c_record)] == [
        switch.__code__.co_firstlineno + 1, RECORD_LINE]


@needs_build
def test_a_compiled_hook_passes_none_and_keywords_through(monkeypatch):
    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    aud = installer.install("record")
    before = len(aud.book._log)
    hook = made_current_hook(installer._gate, lambda stream: stream, "ns.set_stream")
    assert hook(None) is None and len(aud.book._log) == before  # nothing made current
    assert hook(stream="s") == "s" and len(aud.book._log) == before + 1
    with pytest.raises(TypeError):
        hook()  # the original's own error
    assert hook.__wrapped__ is not None and hook.__name__ == "<lambda>"


class Comm:
    def __init__(self, device: int) -> None:
        self.device = device

    def all_reduce(self, tensor, out=None, *, stream=None):
        """Reduce."""
        return stream


@needs_build
def test_a_compiled_wrapper_is_a_method_with_the_original_signature(monkeypatch):
    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    aud = installer.install("record")
    original = Comm.__dict__["all_reduce"]
    assert wrap_stream_method(installer._registry, installer._gate, Comm, "all_reduce",
                              "c.all_reduce", resolve="self.cached", device_expr="self.device",
                              accessor="", current_of_device=lambda d: (5, 0, 1),
                              current_raw_stream=lambda d: Stream.cuda_stream,
                              fixed_device=True)
    wrapped = Comm.__dict__["all_reduce"]
    assert checked_by_compiled_code(wrapped)
    assert inspect.signature(Comm.all_reduce) == inspect.signature(original)
    assert Comm.all_reduce.__doc__ == "Reduce." and Comm.all_reduce.__wrapped__ is original
    comm = Comm(0)
    comm.cached = Stream()
    for _ in range(2):  # the first call keeps the device on the communicator
        assert comm.all_reduce(None) is comm.cached  # the keyword-only stream, passed on
        assert Comm.all_reduce(comm, None, stream=comm.cached) is comm.cached
    assert aud.coverage.launches_by_op()["c.all_reduce"] == 4
    assert aud.findings() == []
    assert weakref.ref(wrapped)() is wrapped  # as a function, it can be weakly referenced
    installer.uninstall()
    assert Comm.__dict__["all_reduce"] is original


def test_the_core_setting_is_checked_and_passed_to_children(monkeypatch):
    with pytest.raises(ConfigError, match="STREAMCHECK_CORE"):
        AuditSettings.load({"STREAMCHECK_CORE": "fast"}, pyproject=False)
    settings = AuditSettings.load({"STREAMCHECK_CORE": "Python"}, pyproject=False)
    assert settings.core == "python" and settings.to_env()["STREAMCHECK_CORE"] == "python"
    assert "STREAMCHECK_CORE" not in AuditSettings.load({}, pyproject=False).to_env()
    monkeypatch.setattr(speedups, "_built", None)
    with pytest.raises(ConfigError, match="not built"):
        speedups.use("compiled")
    speedups.use("auto")
    assert speedups.active() is None and speedups.describe().startswith("python")


CORES = ["python", pytest.param("compiled", marks=needs_build)]


@pytest.fixture(params=CORES)
def core(request, monkeypatch):
    """The ``core`` setting, read when the audit is installed."""
    monkeypatch.setenv("STREAMCHECK_CORE", request.param)
    yield request.param
    speedups.use("auto")


class FakeEvent:
    """An event bound to a device at its first record, as torch.cuda.Event is."""

    def __init__(self) -> None:
        self.device = None
        self.records: list = []

    def record(self, stream=None):
        dev = stream.device_index if stream is not None else READER_STATE["device"]
        self.device = self.device if self.device is not None else SimpleNamespace(index=dev)
        self.records.append(stream)
        if READER_STATE.get("flip_ordering"):  # another thread's first mark, meanwhile
            installer.current_auditor().ordering = True
        return "recorded"


READER_STATE: dict = {"device": 0}


def fake_reader() -> StreamReader:
    return StreamReader(current_stream=lambda d: (READER_STATE.get("sid", 5), d, 1),
                        current_device=lambda: READER_STATE["device"])


def test_an_event_record_is_decided_the_same_by_both_hooks(core, monkeypatch):
    """Bound on its first record; a record on its own device while no clocks are live goes
    straight through (compiled: in C); a record on another device is stopped before it runs;
    once the clocks are live, or when they go live during the record, the recording stream's
    clock is kept on the event (compiled: in C, for a given stream and for the current one)."""
    monkeypatch.setitem(READER_STATE, "device", 0)
    aud = installer.install("assert")
    hook_event_record(installer._registry, installer._gate, FakeEvent, fake_reader())
    is_compiled = type(FakeEvent.__dict__["record"]).__name__ == "GuardedCall"
    assert is_compiled == (core == "compiled")
    aud.clocks._clocks[(0, 5)] = clock = {(0, 5): 3, (1, 2): 1}  # stream 5's, kept as is
    event = FakeEvent()
    assert event.record() == "recorded"  # binds it to device 0
    assert event.record(Stream()) == "recorded"
    assert not hasattr(event, SNAPSHOT_ATTR)  # no clocks live: nothing kept
    other = SimpleNamespace(device_index=1, stream_id=3, cuda_stream=0x33)
    with pytest.raises(StreamHazardError, match="event-device-mismatch"):
        event.record(other)
    monkeypatch.setitem(READER_STATE, "device", 1)
    with pytest.raises(StreamHazardError, match="event-device-mismatch"):
        event.record()  # the thread's current device is another one
    monkeypatch.setitem(READER_STATE, "device", 0)
    assert len(event.records) == 2  # the stopped records never ran
    monkeypatch.setitem(READER_STATE, "flip_ordering", True)
    event.record()  # the clocks go live during this record
    assert getattr(event, SNAPSHOT_ATTR) is clock
    delattr(event, SNAPSHOT_ATTR)
    aud.clocks._clocks[(0, 5)] = later = {(0, 5): 4}
    event.record(Stream())  # live: kept by the compiled hook itself
    assert getattr(event, SNAPSHOT_ATTR) is later
    event.record(SimpleNamespace(device_index=0, stream_id=6))  # a stream with no clock yet
    assert getattr(event, SNAPSHOT_ATTR) == {}
    # live, on the current stream: the clock of the thread's current stream, (0, 5) here; the
    # compiled hook keeps it itself (the Python one asks the auditor)
    asked: list = []
    monkeypatch.setattr(aud, "event_recorded",
                        lambda ev, key: asked.append(key) or aud.clocks.record(ev, key))
    aud.clocks._clocks[(0, 5)] = current = {(0, 5): 5}
    event.record()
    assert getattr(event, SNAPSHOT_ATTR) is current
    assert asked == ([] if core == "compiled" else [(0, 5)])
    monkeypatch.setitem(READER_STATE, "sid", 7)  # now (0, 7), which has no clock yet
    event.record()
    assert getattr(event, SNAPSHOT_ATTR) == {}
    # a reader answer the compiled hook does not take (a str id): the Python one converts it
    monkeypatch.setitem(READER_STATE, "sid", "5")
    event.record()
    assert getattr(event, SNAPSHOT_ATTR) is current
    assert asked[-1] == (0, 5)
    assert len(event.records) == 8


class SlottedEvent:
    """An event that takes no attribute: it can never be bound (the hooks keep going)."""

    __slots__ = ("device", "records")
    __init__ = FakeEvent.__init__
    record = FakeEvent.record


def test_a_first_record_binds_the_event_the_same_in_both_hooks(core, monkeypatch):
    """torch makes a new event in every ``wait_stream``: its first record binds it to the
    device it was recorded on, without the Python hook in the compiled core (it would read the
    event's device afterwards), and keeps its snapshot once the clocks are live."""
    monkeypatch.setitem(READER_STATE, "device", 1)
    asked: list = []

    def event_device(event):
        asked.append(event)
        return event.device.index

    reader = StreamReader(current_stream=lambda d: (5, d, 1),
                          current_device=lambda: READER_STATE["device"],
                          event_device=event_device)
    aud = installer.install("assert")
    for cls in (FakeEvent, SlottedEvent):
        hook_event_record(installer._registry, installer._gate, cls, reader)
    s0 = SimpleNamespace(device_index=0, stream_id=5, cuda_stream=0x55)
    on_stream, on_current = FakeEvent(), FakeEvent()
    assert on_stream.record(s0) == "recorded" and on_current.record() == "recorded"
    assert (on_stream._streamcheck_event_device, on_current._streamcheck_event_device) == (0, 1)
    assert len(asked) == (0 if core == "compiled" else 2)  # the Python hook asks the event
    with pytest.raises(StreamHazardError, match="event-device-mismatch"):
        on_stream.record()  # bound to 0; the thread is on device 1
    aud.ordering = True
    aud.clocks._clocks[(0, 5)] = clock = {(0, 5): 7}
    live = FakeEvent()
    live.record(s0)
    assert live._streamcheck_event_device == 0 and getattr(live, SNAPSHOT_ATTR) is clock
    slotted = SlottedEvent()
    assert slotted.record(s0) == "recorded" and slotted.record(s0) == "recorded"
    assert not hasattr(slotted, "_streamcheck_event_device") and len(slotted.records) == 2


class FakeWaitEvent:
    """An event whose waits are only counted."""

    def __init__(self) -> None:
        self.waits: list = []

    def wait(self, stream=None):
        self.waits.append(stream)
        return "waited"


def test_an_event_wait_is_decided_the_same_by_both_hooks(core):
    """Before the clocks are live a wait goes straight through; after, a wait that adds
    nothing to its stream's clock leaves the clock as it is (compiled: decided in C), any
    other merges the event's snapshot into it; every wait reaches the original."""
    aud = installer.install("assert")
    hook_event_wait(installer._registry, installer._gate, FakeWaitEvent, fake_reader())
    is_compiled = type(FakeWaitEvent.__dict__["wait"]).__name__ == "GuardedCall"
    assert is_compiled == (core == "compiled")
    table = aud.clocks._clocks
    event = FakeWaitEvent()
    setattr(event, SNAPSHOT_ATTR, {(0, 5): 2})
    s6, s7 = (SimpleNamespace(device_index=0, stream_id=i) for i in (6, 7))
    assert event.wait(s7) == "waited" and table == {}  # not live: orders nothing
    aud.ordering = True
    table[(0, 6)] = held = {(0, 5): 3, (0, 6): 1}
    event.wait(s6)
    assert table[(0, 6)] is held  # it held the snapshot already: nothing replaced
    asked: list = []
    merge = aud.event_waited
    aud.event_waited = lambda *a: (asked.append(a), merge(*a))
    event.wait(s7)
    assert table[(0, 7)] == {(0, 5): 2}  # merged
    table[(0, 6)] = {(0, 5): 1, (0, 6): 4}
    event.wait(s6)
    assert table[(0, 6)] == {(0, 5): 2, (0, 6): 4}  # merged, its own entry kept
    assert len(asked) == (0 if is_compiled else 2)  # compiled: merged in C, as take_in
    event.wait()  # the current stream (0, 5), read through the reader
    assert table[(0, 5)] == {(0, 5): 2}
    empty, unrecorded = FakeWaitEvent(), FakeWaitEvent()
    setattr(empty, SNAPSHOT_ATTR, {})
    empty.wait(SimpleNamespace(device_index=0, stream_id=8))
    unrecorded.wait(SimpleNamespace(device_index=0, stream_id=9))
    assert (0, 8) not in table and (0, 9) not in table
    assert len(event.waits) == 5 and len(empty.waits) == len(unrecorded.waits) == 1


class TorchShapedEvent:
    """``torch.cuda.Event``'s record and wait, kept for the test to look at."""

    made: ClassVar[list] = []

    def __init__(self) -> None:
        TorchShapedEvent.made.append(self)
        self.calls: list = []

    def record(self, stream=None):
        self.calls.append(("record", stream))

    def wait(self, stream=None):
        self.calls.append(("wait", stream))


class TorchShapedStream:
    """``torch.cuda.Stream``'s wait_stream, record_event and wait_event, as torch writes them."""

    def __init__(self, stream_id: int) -> None:
        self.device_index, self.stream_id, self.cuda_stream = 0, stream_id, 0x100 + stream_id

    def wait_stream(self, stream):
        self.wait_event(stream.record_event())

    def record_event(self, event=None):
        event = TorchShapedEvent() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event):
        event.wait(self)


class OtherStream(TorchShapedStream):
    """A subclass: its wait_stream is not taken for torch's own."""


def test_a_wait_stream_makes_the_same_edge_in_both_cores_and_in_c_skips_its_events_work(
        core, monkeypatch):
    """With the clocks live, ``a.wait_stream(b)`` leaves ``a``'s clock holding ``b``'s in
    either core. The compiled core makes the edge itself: torch's event inside it is neither
    bound nor given a snapshot (nobody else sees it), and a stream of a subclass goes through
    the event hooks as before. With no clocks live, nothing is kept anywhere."""
    aud = installer.install("assert")
    registry, gate, reader = installer._registry, installer._gate, fake_reader()
    hook_event_record(registry, gate, TorchShapedEvent, reader)
    hook_event_wait(registry, gate, TorchShapedEvent, reader)
    hook_wait_stream(registry, gate, TorchShapedStream, reader)
    compiled = core == "compiled"
    assert (type(TorchShapedStream.__dict__["wait_stream"]).__name__ == "GuardedCall") == compiled
    main, side = TorchShapedStream(3), TorchShapedStream(5)
    table, made = aud.clocks._clocks, TorchShapedEvent.made
    made.clear()
    side.wait_stream(main)  # no clocks live: orders nothing, keeps nothing
    assert table == {} and made[-1].calls == [("record", main), ("wait", side)]
    assert hasattr(made[-1], "_streamcheck_event_device") != compiled  # C: not bound
    streamcheck.handoff(SimpleNamespace(get_device=lambda: 0, data_ptr=lambda: 64), main)
    assert aud.ordering and table[(0, 3)] == {(0, 3): 1}
    asked: list = []
    merge = aud.stream_waited
    monkeypatch.setattr(aud, "stream_waited", lambda *a: (asked.append(a), merge(*a)))
    side.wait_stream(main)
    assert table[(0, 5)] == {(0, 3): 1}  # side now holds main's tick
    # no Python merge asked for: the compiled core merges in C (as take_in), the Python one's
    # event hooks make the edge (event_waited)
    assert asked == []
    assert hasattr(made[-1], SNAPSHOT_ATTR) != compiled
    assert made[-1].calls == [("record", main), ("wait", side)]
    held = table[(0, 5)]
    side.wait_stream(main)  # nothing new: side's clock is left as it is
    assert table[(0, 5)] is held
    main.wait_stream(side)
    assert table[(0, 3)] == {(0, 3): 1}
    # a stream's key put back as another object (the compiled hook keeps the table's own
    # once it finds it there, and its hash): the new clock is read, not the kept object's
    (main_key,) = [key for key in table if key == (0, 3)]
    del table[main_key]
    table[tuple([0, 3])] = {(0, 3): 2}
    table[(0, 5)] = {(0, 3): 1, (0, 5): 4}
    side.wait_stream(main)
    assert table[(0, 5)] == {(0, 3): 2, (0, 5): 4}  # merged, its own entry kept
    assert asked == []
    odd, plain = OtherStream(7), TorchShapedStream(9)
    odd.wait_stream(main)  # another class: the event hooks make the edge, in both cores
    assert table[(0, 7)] == {(0, 3): 2} and hasattr(made[-1], SNAPSHOT_ATTR)
    plain.wait_stream(odd)
    assert table[(0, 9)] == {(0, 3): 2}
    # the audit's own failure to read a stream never fails the wait_stream: it warns
    broken = TorchShapedStream(11)
    broken.stream_id = "eleven"
    with pytest.warns(RuntimeWarning, match="could not audit"):
        broken.wait_stream(main)
    assert made[-1].calls == [("record", main), ("wait", broken)]
    installer.uninstall()


class WaitedStream(TorchShapedStream):
    """A stream whose ``synchronize`` and ``query`` are logged; ``query`` says ``done``."""

    done = True

    def synchronize(self):
        self.calls.append("synchronize")

    def query(self):
        self.calls.append("query")
        return self.done


class OtherWaitedStream(WaitedStream):
    """A subclass: the compiled hook leaves it to the Python one."""


class WaitedNamespace:
    def synchronize(self, device=None):
        return None


class WaitedEvent(TorchShapedEvent):
    def synchronize(self):
        return None

    def query(self):
        return True


def test_a_host_wait_on_a_stream_is_told_the_same_by_both_cores(core, monkeypatch):
    """``stream.synchronize()`` (and a ``query()`` that said True) leaves the done clock
    holding what the stream's clock held when the wait began, in either core; the compiled
    core takes it in C, and a stream of another class, one it cannot read, a poll that said
    False, and a wait with the clocks not live are what Python does."""
    aud = installer.install("assert")
    registry, gate, reader = installer._registry, installer._gate, fake_reader()
    hook_host_waits(registry, gate, WaitedNamespace(), WaitedStream, WaitedEvent, reader)
    compiled = core == "compiled"
    assert (type(WaitedStream.__dict__["synchronize"]).__name__ == "GuardedCall") == compiled
    assert (type(WaitedStream.__dict__["query"]).__name__ == "GuardedCall") == compiled
    load, main = WaitedStream(5), WaitedStream(3)
    load.calls = main.calls = []
    load.synchronize()  # no clocks live: nothing to take in
    assert aud.clocks.done_clock() == {}
    tensor = SimpleNamespace(get_device=lambda: 0, data_ptr=lambda: 64)
    streamcheck.handoff(tensor, main)  # the clocks go live: main ticks
    streamcheck.handoff(tensor, load)  # load ticks too
    aud.clocks.take_in((0, 5), aud.clocks.clock_of((0, 3)))  # load waited for main
    load.synchronize()
    assert aud.clocks.done_clock() == {(0, 3): 1, (0, 5): 1}
    held = aud.clocks.done_clock()
    load.synchronize()  # nothing new: the done clock is left as it is
    assert aud.clocks.done_clock() is held
    streamcheck.handoff(tensor, load)
    load.done = False
    assert load.query() is False  # not done: nothing taken in
    assert aud.clocks.done_clock() == {(0, 3): 1, (0, 5): 1}
    load.done = True
    assert load.query() is True
    assert aud.clocks.done_clock() == {(0, 3): 1, (0, 5): 2}
    odd = OtherWaitedStream(7)
    odd.calls = []
    streamcheck.handoff(tensor, odd)
    odd.synchronize()  # another class: the Python hook, the same result
    assert aud.clocks.done_clock()[(0, 7)] == 1
    broken = WaitedStream(11)
    broken.calls, broken.stream_id = [], "eleven"
    monkeypatch.setattr(launches, "_warned", set())  # said once a process: say it here
    with pytest.warns(RuntimeWarning, match="could not audit"):
        broken.synchronize()  # the audit's failure never fails the wait
    assert broken.calls == ["synchronize"]
    odd_tick = WaitedStream(13)  # a tick the done clock's cannot be compared with
    odd_tick.calls = []
    aud.clocks._clocks[(0, 13)] = {(0, 3): "x"}
    monkeypatch.setattr(launches, "_warned", set())
    with pytest.warns(RuntimeWarning, match="could not audit"):
        assert odd_tick.query() is True  # taking it in failed after the poll: its answer stands
    assert load.calls == ["synchronize"] * 3 + ["query"] * 2
    installer.uninstall()


class PolledEvent(TorchShapedEvent):
    """An event whose ``synchronize`` and ``query`` are logged; ``query`` says ``done``; a
    ``synchronize`` may run ``meanwhile`` (another thread's record during the wait)."""

    done = True
    meanwhile = None

    def synchronize(self):
        self.calls.append("synchronize")
        if self.meanwhile is not None:
            self.meanwhile()

    def query(self):
        self.calls.append("query")
        return self.done


class OtherPolledEvent(PolledEvent):
    """A subclass: the compiled hook leaves it to the Python one."""


def test_a_host_wait_on_an_event_is_told_the_same_by_both_cores(core, monkeypatch):
    """``event.synchronize()`` (and a ``query()`` that said True) leaves the done clock holding
    the event's snapshot as it was when the wait began, in either core; the compiled core
    takes it in C, and an event with no snapshot on it (kept in the clocks' table), one of
    another class, a poll that said False and a wait with the clocks not live are what Python
    does."""
    aud = installer.install("assert")
    registry, gate, reader = installer._registry, installer._gate, fake_reader()
    hook_host_waits(registry, gate, WaitedNamespace(), WaitedStream, PolledEvent, reader)
    compiled = core == "compiled"
    assert (type(PolledEvent.__dict__["synchronize"]).__name__ == "GuardedCall") == compiled
    assert (type(PolledEvent.__dict__["query"]).__name__ == "GuardedCall") == compiled
    main, load = WaitedStream(3), WaitedStream(5)
    event = PolledEvent()
    event.synchronize()  # no clocks live: nothing to take in
    assert aud.clocks.done_clock() == {}
    tensor = SimpleNamespace(get_device=lambda: 0, data_ptr=lambda: 64)
    streamcheck.handoff(tensor, main)  # the clocks go live: main ticks
    setattr(event, SNAPSHOT_ATTR, aud.clocks.clock_of((0, 3)))  # as its live record keeps it
    event.synchronize()
    assert aud.clocks.done_clock() == {(0, 3): 1}
    held = aud.clocks.done_clock()
    event.synchronize()  # nothing new: the done clock is left as it is
    assert aud.clocks.done_clock() is held
    streamcheck.handoff(tensor, main)
    setattr(event, SNAPSHOT_ATTR, aud.clocks.clock_of((0, 3)))
    event.done = False
    assert event.query() is False  # not done: nothing taken in
    assert aud.clocks.done_clock() == {(0, 3): 1}
    event.done = True
    assert event.query() is True
    assert aud.clocks.done_clock() == {(0, 3): 2}
    # re-recorded by another thread during the wait: the host waited for the first record
    streamcheck.handoff(tensor, main)
    setattr(event, SNAPSHOT_ATTR, aud.clocks.clock_of((0, 3)))
    event.meanwhile = lambda: setattr(event, SNAPSHOT_ATTR, {(0, 3): 99})
    event.synchronize()
    assert aud.clocks.done_clock() == {(0, 3): 3}
    # no snapshot on it (an event that takes no attribute keeps it in the clocks' table)
    bare = PolledEvent()
    streamcheck.handoff(tensor, load)
    aud.clocks._events[id(bare)] = aud.clocks.clock_of((0, 5))
    bare.synchronize()
    assert aud.clocks.done_clock() == {(0, 3): 3, (0, 5): 1}
    never = PolledEvent()
    assert never.query() is True  # never recorded live: waits for nothing
    assert aud.clocks.done_clock() == {(0, 3): 3, (0, 5): 1}
    odd = OtherPolledEvent()
    streamcheck.handoff(tensor, main)
    setattr(odd, SNAPSHOT_ATTR, aud.clocks.clock_of((0, 3)))
    odd.synchronize()  # another class: the Python hook, the same result
    assert aud.clocks.done_clock()[(0, 3)] == 4
    broken = PolledEvent()
    setattr(broken, SNAPSHOT_ATTR, "not a clock")
    monkeypatch.setattr(launches, "_warned", set())  # said once a process: say it here
    with pytest.warns(RuntimeWarning, match="could not audit"):
        broken.synchronize()  # the audit's failure never fails the wait
    assert broken.calls == ["synchronize"]
    odd_tick = PolledEvent()  # a tick the done clock's cannot be compared with
    setattr(odd_tick, SNAPSHOT_ATTR, {(0, 3): "x"})
    monkeypatch.setattr(launches, "_warned", set())
    with pytest.warns(RuntimeWarning, match="could not audit"):
        assert odd_tick.query() is True  # taking it in failed after the poll: its answer stands
    assert event.calls == ["synchronize"] * 3 + ["query"] * 2 + ["synchronize"]
    installer.uninstall()


class CountedStream:
    """A stream whose device and id reads are counted."""

    reads = 0

    def __init__(self, stream_id: int) -> None:
        self.sid = stream_id

    @property
    def device_index(self) -> int:
        CountedStream.reads += 1
        return 0

    @property
    def stream_id(self) -> int:
        CountedStream.reads += 1
        return self.sid


class SlottedStream:
    """A stream that takes no weak reference."""

    __slots__ = ("device_index", "stream_id")

    def __init__(self, stream_id: int) -> None:
        self.device_index, self.stream_id = 0, stream_id


def test_the_event_hooks_read_a_streams_key_once_while_they_keep_it(core, monkeypatch):
    """A ``wait_stream`` records on one stream and waits on another, and a step alternates
    between a few: the compiled hooks read a stream's device and id once while it is among
    the last four they saw. Every snapshot and merge is the right stream's however many
    streams come and go, for streams made and freed one after another, and for a stream that
    takes no weak reference."""
    monkeypatch.setattr(CountedStream, "reads", 0)
    aud = installer.install("assert")
    hook_event_record(installer._registry, installer._gate, FakeEvent, fake_reader())
    hook_event_wait(installer._registry, installer._gate, FakeWaitEvent, fake_reader())
    aud.ordering = True
    table = aud.clocks._clocks

    def recorded_on(stream):
        event = FakeEvent()
        event.record(stream)
        return getattr(event, SNAPSHOT_ATTR)

    main, side = CountedStream(10), CountedStream(11)
    table[(0, 10)], table[(0, 11)] = {(0, 10): 1}, {(0, 11): 1}
    for _ in range(3):
        assert recorded_on(main) is table[(0, 10)] and recorded_on(side) is table[(0, 11)]
    # the fake's own record reads the device each time (6); the hooks: each stream's device
    # and id once (compiled), or both at every record (Python)
    assert CountedStream.reads == 6 + (4 if core == "compiled" else 12)
    many = [CountedStream(sid) for sid in range(20, 26)]  # more than the hooks keep
    for _ in range(2):
        for stream in many:
            table[(0, stream.sid)] = clock = {(0, stream.sid): stream.sid}
            assert recorded_on(stream) is clock
    for sid in range(30, 40):  # each freed before the next is made (often at its address)
        table[(0, sid)] = clock = {(0, sid): 1}
        assert recorded_on(CountedStream(sid)) is clock
    for sid in (40, 41, 40):
        table[(0, sid)] = clock = {(0, sid): 2}
        assert recorded_on(SlottedStream(sid)) is clock
    waited = FakeWaitEvent()
    setattr(waited, SNAPSHOT_ATTR, {(0, 10): 5})
    for stream in (main, side, *many):
        waited.wait(stream)
        assert table[(0, stream.sid)][(0, 10)] == 5  # merged into the right stream's clock


@needs_build
def test_the_event_hooks_keep_the_last_four_streams_alive_and_no_more():
    """The compiled hooks hold the streams whose keys they keep by strong references (a weak
    one to a torch 2.11 stream dangles once it is freed), so a kept stream lives on until four
    others have replaced it, and is freed then: nothing kept grows."""
    import weakref

    aud = installer.install("assert")
    hook_event_record(installer._registry, installer._gate, FakeEvent, fake_reader())
    aud.ordering = True
    first = CountedStream(50)
    gone = weakref.ref(first)
    FakeEvent().record(first)
    del first
    gc.collect()
    assert gone() is not None  # kept by the hooks
    for sid in range(51, 54):
        FakeEvent().record(CountedStream(sid))
    assert gone() is not None  # three others: still among the last four
    FakeEvent().record(CountedStream(54))
    assert gone() is None  # the fourth replaced it


def test_the_event_hooks_follow_the_auditor_and_its_clocks_going_live(core, monkeypatch):
    """The compiled hooks read an auditor's clock table once its clocks are live (they stay
    live, and the table is one dict for its life): before that a record keeps nothing and a
    wait orders nothing, after it the clocks are this auditor's, and another auditor behind
    the same hooks is read afresh, its clocks live or not."""
    first = installer.install("assert")
    hook_event_record(installer._registry, installer._gate, FakeEvent, fake_reader())
    hook_event_wait(installer._registry, installer._gate, FakeWaitEvent, fake_reader())
    s5, s6 = CountedStream(5), CountedStream(6)

    def recorded_on(stream):
        event = FakeEvent()
        event.record(stream)
        return getattr(event, SNAPSHOT_ATTR, None)

    def waited(snapshot, stream):
        event = FakeWaitEvent()
        setattr(event, SNAPSHOT_ATTR, snapshot)
        event.wait(stream)

    first.clocks._clocks[(0, 5)] = mine = {(0, 5): 1}
    assert recorded_on(s5) is None  # not live yet
    waited({(0, 5): 1}, s6)
    assert (0, 6) not in first.clocks._clocks
    first.ordering = True
    assert recorded_on(s5) is mine
    waited({(0, 5): 1}, s6)
    assert first.clocks._clocks[(0, 6)] == {(0, 5): 1}
    second = Auditor(Mode.ASSERT)
    try:
        installer._gate.auditor = second  # the same hooks, another auditor
        assert recorded_on(s5) is None and (0, 6) not in second.clocks._clocks
        waited({(0, 5): 1}, s6)
        assert (0, 6) not in second.clocks._clocks  # its clocks are not live
        second.ordering = True
        second.clocks._clocks[(0, 5)] = theirs = {(0, 5): 9}
        assert recorded_on(s5) is theirs
        waited({(0, 5): 9}, s6)
        assert second.clocks._clocks[(0, 6)] == {(0, 5): 9}
        installer._gate.auditor = first
        assert recorded_on(s5) is mine
    finally:
        installer._gate.auditor = first


class FakeTensor:
    def __init__(self, device: int) -> None:
        self.device = device

    def get_device(self) -> int:
        return self.device


def test_a_torch_distributed_call_is_counted_and_decided_the_same_by_both_hooks(core,
                                                                             monkeypatch):
    """Counted once per call on a CUDA tensor (not on a CPU one); the current stream's id
    decides: a helper on the default stream while the engine computes elsewhere is found. The
    main engine thread's current stream is not read: the one rule here spares it."""
    aud = installer.install("record")
    made_current(aud.book, StreamRef(0, 9))  # the main (engine) thread computes on a side stream
    module = SimpleNamespace(all_reduce=lambda tensor, op=None, group=None: "done")
    reads: list = []
    read = fake_reader().current_stream
    wrap_tensor_function(installer._registry, installer._gate, module, "all_reduce",
                         "dist.all_reduce", lambda device: reads.append(device) or read(device),
                         "torch.distributed")
    assert checked_by_compiled_code(module.all_reduce) == (core == "compiled")
    monkeypatch.setitem(READER_STATE, "sid", 7)
    assert module.all_reduce(FakeTensor(0)) == "done"
    assert module.all_reduce(tensor=FakeTensor(0)) == "done"  # found among the keywords
    assert module.all_reduce(FakeTensor(-1)) == "done"  # a CPU tensor: not counted
    assert aud.findings() == [] and reads == []
    monkeypatch.setitem(READER_STATE, "sid", 0)
    assert in_thread(lambda: module.all_reduce(FakeTensor(0)))[0] == "done"
    assert [f.rule_id for f in aud.findings()] == ["default-stream-in-worker"]
    assert aud.coverage.launches_by_op()["dist.all_reduce"] == 3
    assert len(reads) == (2 if core == "compiled" else 1)  # the helper's: by each hook it met
    # the main engine thread on a default stream: its own, fine (engines run there), counted,
    # told without asking the thread roles
    asked = []
    is_engine = aud.is_engine_thread
    monkeypatch.setattr(aud, "is_engine_thread", lambda ident: asked.append(ident)
                        or is_engine(ident))
    assert aud.main_engine is not None and module.all_reduce(FakeTensor(0)) == "done"
    assert [e.count for e in aud.entries()] == [1] and asked == []
    assert len(reads) == (2 if core == "compiled" else 1)  # the main thread's: none
    assert aud.coverage.launches_by_op()["dist.all_reduce"] == 4
    # once another thread is declared the engine, the main thread is a helper there
    stop = threading.Event()
    engine = threading.Thread(target=stop.wait, name="engine")
    engine.start()
    try:
        streamcheck.declare_thread_role(streamcheck.ENGINE, engine.ident)
        assert aud.main_engine is None
        module.all_reduce(FakeTensor(0))
        assert set(asked) == {threading.get_ident()}  # the roles decide
        assert aud.coverage.launches_by_op()["dist.all_reduce"] == 5
    finally:
        stop.set()
        engine.join()
        ROLES.forget(engine.ident)  # the role table is the process's: leave it as it was
    assert aud.main_engine is not None


@needs_build
def test_a_compiled_torch_distributed_hook_is_a_wrapper_with_the_functions_signature(
        monkeypatch):
    """The compiled core puts a generated wrapper with the function's own signature in front
    of it, which asks the hook's plain test (in C) and calls the function itself: a plain call
    never reaches the Python hook, the tensor found by name too, the defaults the function's
    own; every other call does; a function with no positional parameter keeps the hook
    itself."""
    from streamcheck.wrappers import torch_distributed

    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    aud = installer.install("record")
    made_current(aud.book, StreamRef(0, 9))  # the main (engine) thread on a side stream
    monkeypatch.setitem(READER_STATE, "sid", 7)
    calls: list = []

    def all_reduce(tensor, op="sum", group=None, *, async_op=False):
        calls.append((tensor, op, group, async_op))
        return "done"

    def batch(*, ops):
        return "batched"

    module = SimpleNamespace(all_reduce=all_reduce, batch=batch)
    for name in ("all_reduce", "batch"):
        wrap_tensor_function(installer._registry, installer._gate, module, name,
                             f"dist.{name}", fake_reader().current_stream, "torch.distributed")
    wrapped = module.all_reduce
    assert checked_by_compiled_code(wrapped) and wrapped.__wrapped__ is all_reduce
    code = wrapped.__code__  # what it binds besides the parameters: the names a parameter
    bound = set(code.co_varnames) | set(code.co_freevars)  # may not take
    assert bound - {"tensor", "op", "group", "async_op"} <= torch_distributed._WRAPPER_NAMES
    assert inspect.signature(wrapped, follow_wrapped=False) == inspect.signature(all_reduce)
    assert type(module.batch).__name__ == "GuardedCall"
    looked: list = []
    first_tensor = torch_distributed._first_tensor
    monkeypatch.setattr(torch_distributed, "_first_tensor",
                        lambda *a: looked.append(a) or first_tensor(*a))
    t0 = FakeTensor(0)
    assert wrapped(t0) == "done" and calls[-1] == (t0, "sum", None, False)
    assert wrapped(op="max", tensor=t0, async_op=True) == "done"
    assert calls[-1] == (t0, "max", None, True)
    assert looked == [] and aud.coverage.launches_by_op()["dist.all_reduce"] == 2
    assert wrapped(FakeTensor(-1)) == "done" and len(looked) == 1  # a CPU tensor: Python's
    assert aud.coverage.launches_by_op()["dist.all_reduce"] == 2  # and not counted
    monkeypatch.setitem(READER_STATE, "sid", 0)  # a helper on the default stream: found
    assert in_thread(lambda: wrapped(t0))[0] == "done" and len(looked) == 2
    assert [f.rule_id for f in aud.findings()] == ["default-stream-in-worker"]
    assert aud.coverage.launches_by_op()["dist.all_reduce"] == 3
    check = wrapped.__globals__["_check_tensor"]
    with pytest.raises(TypeError):
        check(t0, t0)
    compiled = speedups.active()
    record = compiled.GuardedCall(compiled.EVENT_RECORD, installer._gate, None, None, print,
                                  print, print, "bound", print)
    with pytest.raises(TypeError, match="TENSOR_CALL"):
        record.passes(t0)  # an event's hook has no such test
    installer._gate.auditor = None  # paused: the call goes ahead, uncounted, in C's test
    try:
        assert wrapped(t0) == "done" and check(t0) is True and len(looked) == 2
    finally:
        installer._gate.auditor = aud
    assert aud.coverage.launches_by_op()["dist.all_reduce"] == 3
    assert len(calls) == 5


def logged(fn):
    """torch's ``_exception_logger``'s shape: ``(*args, **kwargs)``, ``__wrapped__`` set."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        wrapper.seen = (args, kwargs)
        return fn(*args, **kwargs)

    return wrapper


@needs_build
def test_a_checked_torch_distributed_wrapper_takes_the_signature_behind_a_logging_wrapper(
        monkeypatch):
    """Behind torch's logging wrapper (``*args, **kwargs``) the function's own signature is
    taken: the tensor given by keyword is found by the compiled test, and the logging wrapper
    gets the arguments positionally, the defaults filled in (the function behind it the same
    values). A positional-only parameter stays one; a parameter named as one of the
    wrapper's own names keeps the compiled hook itself."""
    from streamcheck.wrappers import torch_distributed

    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    aud = installer.install("record")
    made_current(aud.book, StreamRef(0, 9))

    def all_reduce(tensor, op="sum", group=None):
        return (tensor, op, group)

    def send(tensor, /, **options):
        return (tensor, options)

    def clashing(tensor, _sc_original=None):
        return tensor

    module = SimpleNamespace(all_reduce=logged(all_reduce), send=send, clashing=clashing)
    outer = module.all_reduce
    for name in ("all_reduce", "send", "clashing"):
        wrap_tensor_function(installer._registry, installer._gate, module, name,
                             f"dist.{name}", fake_reader().current_stream, "torch.distributed")
    assert checked_by_compiled_code(module.all_reduce) and checked_by_compiled_code(module.send)
    assert type(module.clashing).__name__ == "GuardedCall"
    assert inspect.signature(module.all_reduce, follow_wrapped=False) == inspect.signature(
        all_reduce)
    looked: list = []
    first_tensor = torch_distributed._first_tensor
    monkeypatch.setattr(torch_distributed, "_first_tensor",
                        lambda *a: looked.append(a) or first_tensor(*a))
    t0 = FakeTensor(0)
    assert module.all_reduce(t0, group="g") == (t0, "sum", "g")
    assert outer.seen == ((t0, "sum", "g"), {})
    assert module.all_reduce(group="g", tensor=t0) == (t0, "sum", "g")
    assert module.send(t0, tensor="an option") == (t0, {"tensor": "an option"})
    assert module.clashing(t0, _sc_original=1) is t0
    assert looked == [] and aud.findings() == []
    counted = aud.coverage.launches_by_op()
    assert (counted["dist.all_reduce"], counted["dist.send"], counted["dist.clashing"]) == (2, 1, 1)
    with pytest.raises(TypeError):
        module.all_reduce()  # a call the function would refuse: refused


@needs_build
def test_a_compiled_torch_distributed_test_finds_the_tensor_in_a_list_first(monkeypatch):
    """all_gather and all_to_all take a list of tensors first, batch_isend_irecv a list of
    P2POps (their ``tensor``): the compiled test finds the device there, as the Python hook's
    ``_first_tensor`` does, and lets the call through; an empty list, None (barrier's group)
    and a list of other things go to the Python hook, which counts only a CUDA tensor's."""
    from streamcheck.wrappers import torch_distributed

    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    aud = installer.install("record")
    made_current(aud.book, StreamRef(0, 9))
    module = SimpleNamespace(all_gather=lambda tensor_list, tensor, group=None: "gathered",
                             batch_isend_irecv=lambda p2p_op_list: "sent",
                             barrier=lambda group=None: "waited")
    for name in ("all_gather", "batch_isend_irecv", "barrier"):
        wrap_tensor_function(installer._registry, installer._gate, module, name,
                             f"dist.{name}", fake_reader().current_stream, "torch.distributed")
        assert checked_by_compiled_code(getattr(module, name))
    looked: list = []
    first_tensor = torch_distributed._first_tensor
    monkeypatch.setattr(torch_distributed, "_first_tensor",
                        lambda *a: looked.append(a) or first_tensor(*a))
    t0 = FakeTensor(0)
    op = SimpleNamespace(tensor=t0)  # a P2POp's shape
    assert module.all_gather([t0, t0], t0) == "gathered"
    assert module.all_gather((t0,), tensor=t0) == "gathered"
    assert module.batch_isend_irecv([op, op]) == "sent"
    assert looked == []
    assert module.all_gather([], t0) == "gathered"  # found by the Python hook: the tensor
    assert module.batch_isend_irecv([object()]) == "sent"  # nothing to count
    assert module.barrier() == "waited"
    assert len(looked) == 3 and aud.findings() == []
    counted = aud.coverage.launches_by_op()
    assert (counted["dist.all_gather"], counted["dist.batch_isend_irecv"]) == (3, 1)
    assert counted.get("dist.barrier", 0) == 0  # listed at its install, never counted


class CountingResolver:
    """A communicator whose stream=None accessor counts its calls (torch.cuda.current_stream
    costs microseconds: a wrapper must not ask twice)."""

    asked = 0

    def __init__(self) -> None:
        self.device = 0

    def _current(self):
        type(self).asked += 1
        return DEFAULT

    def all_reduce(self, tensor, stream=None):
        return stream


DEFAULT = SimpleNamespace(device_index=0, stream_id=0, cuda_stream=0)  # the legacy default


def test_a_stream_none_launch_asks_for_its_stream_once(core):
    """The main engine thread on the default stream (handle 0, which names a default stream on
    every device, so the handle comparison cannot tell): still one accessor call per launch."""
    aud = installer.install("assert")
    wrap_stream_method(installer._registry, installer._gate, CountingResolver, "all_reduce",
                       "count.all_reduce", resolve="self._current()", device_expr="self.device",
                       accessor="", current_of_device=lambda d: (0, 0, 1),
                       current_raw_stream=lambda d: 0, fixed_device=True)
    comm = CountingResolver()
    comm.all_reduce(None)  # keeps the device on the communicator
    CountingResolver.asked = 0
    for _ in range(3):
        assert comm.all_reduce(None) is DEFAULT
    assert CountingResolver.asked == 3
    assert aud.findings() == [] and aud.coverage.launches_by_op()["count.all_reduce"] == 4


class TorchLikeStream:
    """A stream class shaped as torch.cuda.Stream: its own ``__new__`` takes a device, or the
    ``stream_id`` of an existing stream to wrap (what ``current_stream()`` passes)."""

    made = 0

    def __new__(cls, device=None, priority=0, **kwargs):
        stream = object.__new__(cls)
        if "stream_id" in kwargs:
            stream.stream_id = kwargs["stream_id"]
        else:
            cls.made += 1
            stream.stream_id = 100 + cls.made
        stream.device_index, stream.cuda_stream = 0, 0x7F00 + stream.stream_id
        return stream


def test_a_stream_creation_is_recorded_the_same_by_both_hooks(core):
    """A creation is recorded with the line that made it; a wrap of an existing stream (a
    ``stream_id`` given) is not a creation and records nothing (compiled: no Python frame)."""
    aud = installer.install("record")
    registry = installer._registry
    hook_stream_creation(registry, installer._gate, TorchLikeStream, "torch.cuda")
    try:
        hook = TorchLikeStream.__dict__["__new__"].__func__
        assert (type(hook).__name__ == "CreationHook") == (core == "compiled")
        made = TorchLikeStream(device=0)  # CREATION_LINE
        wrapped = TorchLikeStream(stream_id=7, device_index=0, device_type=1)
        assert wrapped.stream_id == 7 and isinstance(made, TorchLikeStream)
        origin = aud.book.origin(StreamRef(0, made.stream_id))
        assert origin is not None and origin.via == "torch.cuda.Stream()"
        line = next(n for n, text in enumerate(Path(__file__).read_text().splitlines(), 1)
                    if text.rstrip().endswith("# CREATION_LINE") and "next(" not in text)
        assert origin.stack[0][:2] == (__file__, line)
        assert aud.book.origin(StreamRef(0, 7)) is None
    finally:
        registry.restore(TorchLikeStream, ("__new__",))


def test_a_creation_is_recorded_in_the_book_of_the_auditor_the_gate_has_now(core):
    """The compiled hook reads an auditor's book once and keeps it: a creation under another
    auditor (the same hooks) goes to that one's book, none goes anywhere with no auditor, and
    the first auditor's book takes them again when it is back. Each is recorded in C (no
    device named), in the book's own form."""
    first = installer.install("record")
    registry = installer._registry
    hook_stream_creation(registry, installer._gate, TorchLikeStream, "torch.cuda")
    second = Auditor(Mode.RECORD)
    try:
        def made_under(auditor):
            installer._gate.auditor = auditor
            return StreamRef(0, TorchLikeStream().stream_id)  # recorded in C, compiled

        ones = [made_under(first), made_under(second), made_under(None), made_under(first)]
        kinds = {type(v).__name__ for a in (first, second) for v in a.book._created.values()}
        assert kinds == ({"tuple"} if core == "compiled" else {"StreamEvent"})
        assert [first.book.origin(r) is not None for r in ones] == [True, False, False, True]
        assert [second.book.origin(r) is not None for r in ones] == [False, True, False, False]
    finally:
        installer._gate.auditor = first
        registry.restore(TorchLikeStream, ("__new__",))


@needs_build
def test_a_compiled_creation_makes_nothing_the_cyclic_collector_counts(monkeypatch):
    """A creation is kept as long as the audit runs: the compiled hook writes it into the
    book's CreationTable as plain fields and marks it in the SwitchLog, so a creation leaves no
    object for the collector to count or traverse beyond the stream itself (a record, its key
    and its site each did, and the collections they brought were most of what the hook
    added). The record is made when read, with the same site, thread and time."""
    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    aud = installer.install("record")
    registry = installer._registry
    hook_stream_creation(registry, installer._gate, TorchLikeStream, "torch.cuda",
                         DeviceHome(0))
    made = []

    try:
        assert type(aud.book._created).__name__ == "CreationTable"
        installer._gate.auditor = None
        plain = young_objects_added(lambda: made.append(TorchLikeStream()), 40)
        installer._gate.auditor = aud
        TorchLikeStream()  # the first reads the book once (a weak reference to the auditor)
        audited = young_objects_added(lambda: made.append(TorchLikeStream()), 40)
        mark = aud.book._log[-1]
    finally:
        registry.restore(TorchLikeStream, ("__new__",))
        installer.uninstall()
        speedups.use("auto")
    assert audited == plain
    assert len(aud.book._created) == 41
    record = aud.book._created[(0, made[-1].stream_id)]
    assert record[0] is made[-1] and record[1] == threading.get_ident() and record[3]
    assert record[5] == threading.current_thread().name and record[6] == "created"
    assert aud.book._created.get((0, made[0].stream_id)) is None  # made with no audit
    # the log marks where the stream's present life began, by its key (no device type read)
    assert mark == ((0, made[-1].stream_id, -1, TorchLikeStream), threading.get_ident(),
                    "torch.cuda.Stream()", (), 0.0, None, "created")


PLAIN_CREATION_LINE = next(n for n, text in enumerate(Path(__file__).read_text().splitlines(), 1)
                           if text.rstrip().endswith("# PLAIN_CREATION") and "next(" not in text)


def plain_creation(home=None):
    """``TorchLikeStream()`` (and with a priority) under the audit: the origin each records."""
    aud = installer.install("record")
    registry = installer._registry
    hook_stream_creation(registry, installer._gate, TorchLikeStream, "torch.cuda", home)
    try:
        made = TorchLikeStream()  # PLAIN_CREATION
        urgent = TorchLikeStream(priority=-1)
        return aud, [aud.book.origin(StreamRef(0, s.stream_id)) for s in (made, urgent)]
    finally:
        registry.restore(TorchLikeStream, ("__new__",))
        installer.uninstall()


def test_a_plain_creation_gives_the_same_origin_from_both_hooks(monkeypatch):
    """``Stream()`` and ``Stream(priority=...)`` on the engine's device: the compiled hook
    records them itself (no StreamEvent, no Python frame), the origin a finding gets is the
    Python hook's: stream, creating line, thread name and role, via."""
    origins = {}
    try:
        for core in ("python", "compiled") if speedups.built() else ("python",):
            origins[core] = _plain_origins(core, monkeypatch)
    finally:
        speedups.use("auto")
    if "compiled" in origins:
        stacks = [[o.stack[:2] for o in origins[core]] for core in ("python", "compiled")]
        assert stacks[0] == stacks[1]
        assert [replace(o, stack=(), time=0.0, stream=None) for o in origins["python"]
                ] == [replace(o, stack=(), time=0.0, stream=None) for o in origins["compiled"]]


def _plain_origins(core, monkeypatch):
    """The origins of a plain creation with ``core``'s hook, each checked on its own."""
    monkeypatch.setenv("STREAMCHECK_CORE", core)
    before = time.time()
    aud, origins = plain_creation(DeviceHome(0))
    for origin in origins:
        assert origin is not None and origin.kind == "created"
        assert origin.via == "torch.cuda.Stream()"
        assert origin.stream.handle == 0x7F00 + origin.stream.stream_id
        assert origin.thread == aud.thread_ref(threading.get_ident())
        assert before <= origin.time <= time.time()
    assert origins[0].stack[0][:2] == (__file__, PLAIN_CREATION_LINE)
    assert aud.findings() == []
    # the compiled hook kept its own records (made events only when asked), no StreamEvent
    kept = {type(v).__name__ for v in aud.book._created.values()}
    assert kept == ({"tuple"} if core == "compiled" else {"StreamEvent"})
    return origins


def test_a_plain_creation_off_the_engines_device_is_still_judged(core):
    """A helper thread's ``Stream()`` landing off the engine's device: the compiled hook hands
    it to the Python one, which applies the rules (``stream-on-unbound-device``); the engine's
    own creations there, and any creation with no audit running, are not findings."""
    home = DeviceHome(1)
    aud = installer.install("record")
    registry = installer._registry
    hook_stream_creation(registry, installer._gate, TorchLikeStream, "torch.cuda", home)
    try:
        TorchLikeStream()  # the main thread is the engine: its stream is its own business
        made, _ = in_thread(TorchLikeStream)
        assert [f.rule_id for f in aud.findings()] == ["stream-on-unbound-device"]
        assert aud.book.origin(StreamRef(0, made.stream_id)).thread.name == "helper"
        installer._gate.auditor = None
        gone = TorchLikeStream()
        assert aud.book.origin(StreamRef(0, gone.stream_id)) is None
    finally:
        registry.restore(TorchLikeStream, ("__new__",))


def _creation_kept(hook_home, make):
    """What the book keeps for the stream ``make()`` returns (a record or a StreamEvent) and its
    origin, with the creation hooked against ``hook_home``."""
    aud = installer.install("record")
    registry = installer._registry
    hook_stream_creation(registry, installer._gate, TorchLikeStream, "torch.cuda", hook_home)
    try:
        made = make()
        key = (0, made.stream_id)
        return aud, type(aud.book._created[key]).__name__, aud.book.origin(StreamRef(*key))
    finally:
        registry.restore(TorchLikeStream, ("__new__",))


def test_a_creation_with_no_engine_device_chosen_yet_is_recorded_unchecked(core):
    aud, kept, origin = _creation_kept(DeviceHome(), lambda: in_thread(TorchLikeStream)[0])
    assert kept == ("tuple" if core == "compiled" else "StreamEvent")
    assert origin.thread.name == "helper" and aud.findings() == []


def test_a_thread_threading_does_not_know_is_named_as_the_python_hook_names_it(core):
    """A thread started with ``_thread`` (as C++ threads are, to Python): the origin names it
    as ``threading.current_thread()`` does there. The compiled hook hands such a creation to the
    Python one, which makes ``threading`` a dummy Thread for it; a later thread given the same
    ident finds that dummy in ``threading._active`` and is named by it, on either path."""
    box = {}

    def make():
        done = threading.Event()

        def run():
            box["stream"] = TorchLikeStream()
            box["name"] = threading.current_thread().name
            done.set()

        _thread.start_new_thread(run, ())
        assert done.wait(10)
        return box["stream"]

    _aud, _kept, origin = _creation_kept(DeviceHome(0), make)
    assert origin.thread.name == box["name"] and box["name"].startswith("Dummy-")


def test_an_external_stream_goes_to_the_python_hook(core):
    """``stream_ptr`` names a stream made elsewhere: not a plain creation."""
    _aud, kept, origin = _creation_kept(DeviceHome(1), lambda: TorchLikeStream(stream_ptr=5))
    assert kept == "StreamEvent" and origin.via == "torch.cuda.Stream()"


def test_two_engines_choosing_devices_at_once_leave_no_single_home_device():
    """``DeviceHome.chosen`` from two threads at once: once two devices were chosen there is
    no home device, whatever the interleaving (a lost update left one, wrongly)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(800):
            home, both = DeviceHome(), threading.Barrier(2)

            def choose(device, home=home, both=both):
                both.wait()
                home.chosen(device)

            threads = [threading.Thread(target=choose, args=(d,)) for d in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert home.device is None
    finally:
        sys.setswitchinterval(old)


def test_the_compiled_creation_names_a_thread_from_its_record_even_after_it_ended(core):
    """The name is taken when the stream is made, as the Python hook's ThreadRef is."""
    aud = installer.install("record")
    registry = installer._registry
    hook_stream_creation(registry, installer._gate, TorchLikeStream, "torch.cuda", None)
    try:
        made, _ = in_thread(TorchLikeStream, name="kv-saver")
        assert aud.book.origin(StreamRef(0, made.stream_id)).thread.name == "kv-saver"
    finally:
        registry.restore(TorchLikeStream, ("__new__",))


class SwitchingResolver:
    """A communicator on cuda:0 whose stream=None accessor returns ``stream``: the same object
    at every launch (as vLLM's kept current_stream() does) until the test swaps it."""

    stream = None

    def __init__(self) -> None:
        self.device = 0

    def _current(self):
        return type(self).stream

    def all_reduce(self, tensor, stream=None):
        return stream


def audit_switching(op, stream_id, handle):
    """``assert`` on, and ``SwitchingResolver.all_reduce`` wrapped as ``op`` with its device
    kept, the calling thread's current stream on any device being ``stream_id`` (handle
    ``handle``)."""
    installer.install("assert")
    wrap_stream_method(installer._registry, installer._gate, SwitchingResolver, "all_reduce",
                       op, resolve="self._current()", device_expr="self.device", accessor="",
                       current_of_device=lambda d: (stream_id, d, 1),
                       current_raw_stream=lambda d: handle, fixed_device=True)


def test_a_kept_stream_is_read_once_and_another_object_again(core):
    """The compiled check keeps the handle and device of the last stream object it read; a
    different object (here the leak: cuda:1's default stream, the same handle 0) is read
    afresh and stopped, and the first one is let through again."""
    audit_switching("switch.all_reduce", 0, 0)
    comm = SwitchingResolver()
    here = SimpleNamespace(device_index=0, stream_id=0, cuda_stream=0)
    SwitchingResolver.stream = here
    for _ in range(3):
        assert comm.all_reduce(None) is here
    SwitchingResolver.stream = SimpleNamespace(device_index=1, stream_id=0, cuda_stream=0)
    with pytest.raises(StreamHazardError):
        comm.all_reduce(None)
    SwitchingResolver.stream = here
    assert comm.all_reduce(None) is here
    # a stream passed in is kept the same way: the same object again is let through, another
    # object (on cuda:1) is read afresh and stopped, and so is one resolved after it
    side = SimpleNamespace(device_index=0, stream_id=4, cuda_stream=0x7F04)
    for _ in range(2):
        assert comm.all_reduce(None, stream=side) is side
    with pytest.raises(StreamHazardError):
        comm.all_reduce(None, stream=SimpleNamespace(device_index=1, stream_id=4,
                                                     cuda_stream=0x7F14))
    SwitchingResolver.stream = SimpleNamespace(device_index=1, stream_id=0, cuda_stream=0)
    with pytest.raises(StreamHazardError):
        comm.all_reduce(None)


def test_the_doctor_says_which_hooks_this_install_has(monkeypatch):
    from streamcheck.doctor.environment import hooks_item

    monkeypatch.delenv("STREAMCHECK_CORE", raising=False)  # the default: compiled where built
    item = hooks_item()
    assert item.name == "audit hooks"
    assert item.value == ("compiled (streamcheck._speedups)" if speedups.built() else "Python")
    monkeypatch.setenv("STREAMCHECK_CORE", "python")
    if speedups.built():
        item = hooks_item()
        assert item.value == "Python (chosen)" and "STREAMCHECK_CORE" in item.detail
    monkeypatch.setenv("STREAMCHECK_CORE", "fastest")
    assert hooks_item().ok is False and "fastest" in hooks_item().detail
    monkeypatch.delenv("STREAMCHECK_CORE")
    monkeypatch.setattr(speedups, "_built", None)
    monkeypatch.setattr(speedups, "_missing", "ModuleNotFoundError: no compiler at install")
    monkeypatch.setattr(speedups, "_active", None)
    item = hooks_item()
    assert item.value == "Python" and item.ok is None and "no compiler" in item.detail


class Interrupted:
    """A communicator whose stream accessor is interrupted once (a Ctrl-C arrives once: a
    hook that drops it and asks again never sees it again)."""

    def __init__(self) -> None:
        self.device = 0
        self.interrupt = False

    def _current(self):
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        return STREAM

    def all_reduce(self, tensor, stream=None):
        return stream


def test_an_interrupt_inside_a_hook_is_never_swallowed(core, monkeypatch):
    """The hooks set aside what goes wrong while they read (an ``Exception``: the call goes
    ahead, audited by the Python wrapper or unaudited with a warning); a KeyboardInterrupt or
    SystemExit always reaches the caller, as it does through the Python hooks."""
    installer.install("assert")
    wrap_stream_method(installer._registry, installer._gate, Interrupted, "all_reduce",
                       "int.all_reduce", resolve="self._current()", device_expr="self.device",
                       accessor="", current_of_device=lambda d: (5, 0, 1),
                       current_raw_stream=lambda d: 5, fixed_device=True)
    comm = Interrupted()
    assert comm.all_reduce(None) is STREAM  # keeps the device on the communicator
    comm.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        comm.all_reduce(None)
    once = [True]

    def interrupted_device() -> int:
        if once.pop() if once else False:
            raise KeyboardInterrupt
        return 0

    reader = StreamReader(current_stream=lambda d: (5, d, 1), current_device=interrupted_device)
    hook_event_record(installer._registry, installer._gate, FakeEvent, reader)
    event = FakeEvent()
    event.device = SimpleNamespace(index=0)
    event._streamcheck_event_device = 0  # bound already: the record reads the current device
    with pytest.raises(KeyboardInterrupt):
        event.record()


class PositionalOnly:
    def __init__(self) -> None:
        self.device = 0

    def all_reduce(self, tensor, stream=None, /):
        return stream


def test_a_positional_only_stream_parameter_keeps_the_python_wrapper(core):
    """The compiled check is installed only where the stream parameter can be passed by name,
    as on every communicator it was measured on: a positional-only one keeps the Python
    wrapper."""
    installer.install("record")
    wrap_stream_method(installer._registry, installer._gate, PositionalOnly, "all_reduce",
                       "po.all_reduce", resolve="self.cached", device_expr="self.device",
                       accessor="", current_of_device=lambda d: (5, 0, 1),
                       current_raw_stream=lambda d: Stream.cuda_stream, fixed_device=True)
    assert not checked_by_compiled_code(PositionalOnly.__dict__["all_reduce"])
    comm = PositionalOnly()
    comm.cached = Stream()
    assert comm.all_reduce(None) is comm.cached and comm.all_reduce(None) is comm.cached


@needs_build
def test_compiled_hooks_in_a_reference_cycle_are_collected():
    """Each compiled type lets the GC see and clear its references (a hook whose __dict__
    refers back to it, as ``functools.update_wrapper`` data may)."""

    from streamcheck import _speedups as compiled

    gate = SimpleNamespace(auditor=None)
    hooks = [compiled.SetStreamHook(gate, print, "via"),
             compiled.GuardedCall(compiled.EVENT_RECORD, gate, None, None, print, print, print,
                                  "bound", print)]
    refs = []
    for hook in hooks:
        hook.me = hook
        refs.append(weakref.ref(hook))
    owner = SimpleNamespace()  # a check reaches itself through what it holds
    owner.check = compiled.StreamCheck(gate, owner, iter(()), True, None, None)
    refs.append(weakref.ref(owner.check))
    del hooks, hook, owner
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


class RefusingEvent(FakeEvent):
    """An event that refuses the audit's attribute with an error of its own."""

    def __setattr__(self, name, value):
        if name == "_streamcheck_event_device":
            raise RuntimeError("no attributes here")
        super().__setattr__(name, value)


def test_a_record_that_ran_is_never_failed_by_its_audit(core, monkeypatch, recwarn):
    """The event refuses to be bound after its first record: the record has run, so both
    hooks return its result (the Python one also warns that it could not audit)."""
    monkeypatch.setitem(READER_STATE, "device", 0)
    installer.install("assert")
    hook_event_record(installer._registry, installer._gate, RefusingEvent, fake_reader())
    event = RefusingEvent()
    assert event.record(SimpleNamespace(device_index=0, stream_id=5)) == "recorded"
    assert len(event.records) == 1


@needs_build
def test_the_compiled_site_is_the_python_one():
    """Every declared access and stream creation keeps a site made in C where the extension
    is built: the same frames, the same offsets, the same lines once formatted, the same
    answer where the stack is shallower than asked."""
    from streamcheck._speedups import capture_site as compiled

    from streamcheck.core import ids
    from streamcheck.core.ids import frames_of

    try:
        speedups.use("compiled")
        assert ids.site_capture is compiled
        speedups.use("python")  # the Python core takes its sites in Python too
        assert ids.site_capture is ids.capture_site
    finally:
        speedups.use("auto")
    assert ids.site_capture is compiled

    def both(skip, depth):
        return compiled(skip=skip, depth=depth), ids.capture_site(skip, depth)

    def outer():
        return both(1, 3), both(0, 12), both(10_000, 4), both(2, 0)

    for c_site, py_site in outer():
        assert len(c_site) == len(py_site)
        assert c_site[0::2] == py_site[0::2]  # the same code objects, innermost first
        # outer frames are at the same instruction; the innermost calls from another offset
        skip_inner = 2 if c_site and c_site[0] is both.__code__ else 0
        assert c_site[skip_inner + 1::2] == py_site[skip_inner + 1::2]
        assert frames_of(c_site) == frames_of(py_site)  # one line: the same lines
    assert outer()[2] == ((), ())  # deeper than the stack: nothing
    with pytest.raises(ValueError):
        compiled(depth=65)
    with pytest.raises(TypeError):
        compiled(1, skip=1)


@needs_build
def test_the_compiled_site_reads_generator_coroutine_and_nested_frames_as_python_does():
    """The frames are read where the interpreter keeps them (``FRAMES_IN_PLACE``, where its
    internal headers were installed at the build), not made into frame objects: the same
    frames and offsets as Python's walk through a generator, a coroutine awaited by another,
    a lambda, a comprehension and recursion, at every skip and depth."""
    import asyncio

    from streamcheck._speedups import FRAMES_IN_PLACE
    from streamcheck._speedups import capture_site as compiled

    from streamcheck.core import ids

    assert FRAMES_IN_PLACE in (0, 1)

    def both(skip, depth):
        return compiled(skip, depth), ids.capture_site(skip, depth)

    def nested(n, skip, depth):
        return nested(n - 1, skip, depth) if n else both(skip, depth)

    pairs = [nested(n, skip, depth) for n in range(3) for skip in range(1, 7)
             for depth in (0, 1, 4, 9)]

    def gen():
        yield both(1, 6)
        yield both(2, 6)

    async def inner():
        await asyncio.sleep(0)
        return both(1, 6), both(3, 8)

    async def awaiting():
        return await inner()

    pairs += [*gen(), *asyncio.run(awaiting()), (lambda: both(1, 5))(),
              *[both(1, 5) for _ in range(1)]]
    differ = [i for i, (c_site, py_site) in enumerate(pairs) if c_site != py_site]
    assert differ == []
    assert sum(1 for c_site, _ in pairs if not c_site) == 3 * 6  # depth 0 only: nothing


@needs_build
def test_the_compiled_switch_log_keeps_what_a_bounded_deque_keeps():
    from collections import deque

    from streamcheck._speedups import SwitchLog

    log, reference = SwitchLog(4), deque(maxlen=4)
    for n in range(7):
        record = (f"stream{n}", n, "via", None, 0, None, 0)
        log.append(record)
        reference.append(record)
        assert list(log) == list(reference) and len(log) == len(reference)
    assert log[-1] == reference[-1] and log[0] == reference[0] and log.maxlen == 4
    with pytest.raises(IndexError):
        log[4]
    log.clear()
    assert list(log) == [] and len(log) == 0
    with pytest.raises(ValueError):
        SwitchLog(0)


def _book_answers(core: str, monkeypatch) -> tuple[str, list]:
    """Switches made through the compiled hook by two threads into an auditor made under
    ``core`` (its book's log is that core's), and what the book answers about them."""
    monkeypatch.setenv("STREAMCHECK_CORE", core)
    aud = installer.install("record")
    kind = type(aud.book._log).__name__
    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    speedups.use("compiled")
    hook = made_current_hook(installer._gate, lambda s: s, "ns.set_stream")
    side = SimpleNamespace(device_index=0, stream_id=9, cuda_stream=0x99)
    main = SimpleNamespace(device_index=0, stream_id=3, cuda_stream=0x33)
    ident, other = threading.get_ident(), in_thread(lambda: (hook(side), threading.get_ident()))
    switch(hook, main)
    book = aud.book
    elsewhere = book.made_current_elsewhere(StreamRef(0, 9), ident)
    answers = [book.is_current_in(StreamRef(0, 3), ident),
               book.is_current_in(StreamRef(0, 9), ident), book.current_of(ident, 0),
               # the helper thread is another one each time: the rest of its event
               elsewhere.thread.ident == other[1], replace(elsewhere, thread=None)]
    installer.uninstall()
    return kind, answers


@needs_build
def test_the_book_answers_the_same_over_either_switch_log(monkeypatch):
    """The compiled hook fills the compiled log's slots without making the records, and makes
    the tuple for a deque; the rules read the same switches, streams, threads and sites."""
    slots, slot_answers = _book_answers("compiled", monkeypatch)
    tuples, tuple_answers = _book_answers("python", monkeypatch)
    assert (slots, tuples) == ("SwitchLog", "deque")
    assert slot_answers == tuple_answers
    here, there, current, by_the_helper, elsewhere = slot_answers
    assert (here, there, by_the_helper) == (True, False, True)
    assert current.stream.key == (0, 3)
    assert current.stack[0][1] == switch.__code__.co_firstlineno + 1
    assert elsewhere.stream.key == (0, 9) and elsewhere.via == "ns.set_stream"


@needs_build
def test_a_switch_logs_streams_are_released_when_overwritten_cleared_or_collected():

    from streamcheck._speedups import SwitchLog

    class Obj:
        pass

    log = SwitchLog(2)
    first = Obj()
    gone = weakref.ref(first)
    log.append((first,))
    del first
    assert gone() is not None  # kept while its record is
    log.append((Obj(),))
    log.append((Obj(),))  # overwrites the first
    assert gone() is None
    kept = Obj()
    kept.log = log  # a cycle through the log
    log.append((kept,))
    watch = weakref.ref(kept)
    del kept, log
    gc.collect()
    assert watch() is None


@needs_build
@pytest.mark.parametrize("read", ["oldest_first", "newest_first", "item", "list"])
def test_a_read_is_not_spoiled_by_switches_a_collection_makes_meanwhile(read):
    """Making a record allocates; a collection it starts can run a finalizer that switches
    streams, overwriting the slots being read and freeing the streams they held. A read
    returns the records as they were when it began (it copies the slots first)."""

    from streamcheck._speedups import SetStreamHook, SwitchLog

    log = SwitchLog(4)
    gate = SimpleNamespace(auditor=SimpleNamespace(made_current=log.append))
    hook = SetStreamHook(gate, lambda stream: None, "ns.set_stream")
    freed: list[int] = []

    class Owned:  # a stream only the log keeps alive
        def __init__(self, n: int) -> None:
            self.n = n

        def __del__(self) -> None:
            freed.append(self.n)

    class SwitchesWhenCollected:
        def __init__(self) -> None:
            self.me = self  # a cycle: freed by the collector, not by its count

        def __del__(self) -> None:
            for n in range(100, 104):
                hook(Owned(n))  # fills the log anew

    for n in range(4):
        hook(Owned(n))
    gc.collect()
    threshold = gc.get_threshold()
    gc.disable()
    SwitchesWhenCollected()
    started = {"oldest_first": iter, "newest_first": SwitchLog.newest_first}.get(read)
    reading = started(log) if started else None  # the copy is taken here
    gc.set_threshold(1)  # the next allocation collects: the finalizer runs mid-read
    gc.enable()
    try:
        if read == "list":  # list() allocates before it iterates: either state, whole
            records = list(log)
            assert [r[0].n for r in records] in ([0, 1, 2, 3], [100, 101, 102, 103])
            assert not {r[0].n for r in records} & set(freed)
        elif reading is not None:
            records = [record for record in reading]
            assert freed == []  # the streams the read copied stay alive through it
            if read == "newest_first":
                records.reverse()
            assert [r[0].n for r in records] == [0, 1, 2, 3]
        else:
            record = log[0]
            assert record[0].n == 0  # the record read, not the one written meanwhile
    finally:
        gc.collect()  # 3.12+ collects at the next check, not in the allocation: by now
        gc.set_threshold(*threshold)
    assert [r[0].n for r in log] == [100, 101, 102, 103]  # the finalizer's switches are kept
    reading = records = record = None
    gc.collect()
    assert sorted(freed) == [0, 1, 2, 3]


@needs_build
def test_a_cycle_through_a_reading_of_the_switch_log_is_collected():
    """A reading holds the records it copied: a stream that keeps the reading alive makes a
    cycle, which the collector must see through (and an exhausted reading holds nothing)."""

    from streamcheck._speedups import SwitchLog

    class Held:
        pass

    log = SwitchLog(2)
    held = Held()
    log.append((held,))
    held.reading = log.newest_first()  # held -> reading -> its copy -> held
    gone = weakref.ref(held)
    del held
    log.clear()
    gc.collect()
    assert gone() is None
    kept = Held()
    log.append((kept,))
    reading = iter(log)
    assert [r[0] for r in reading] == [kept]
    assert gc.get_referents(reading) == []  # exhausted: the copy is dropped


@needs_build
def test_the_collector_visits_what_the_switch_log_holds_as_it_fills_and_wraps():
    """The log's traversal visits its filled slots only (the first ``len(log)``: it fills from
    the start): every record it holds as it fills, after it wraps, and nothing after a clear
    (none missed: a missed one would leak a cycle through it)."""

    from streamcheck._speedups import SwitchLog

    class Held:
        pass

    log = SwitchLog(3)
    assert gc.get_referents(log) == []
    first, second = Held(), ("whole", Held())
    log.append(first_record := (first, 1, "via.one", switch.__code__, 0, None, 0))
    log.append(second)
    assert {id(o) for o in gc.get_referents(log)} == {id(first_record), id(second)}
    more = [(Held(),) for _ in range(4)]
    for record in more:
        log.append(record)  # wraps: the oldest three are overwritten
    assert {id(o) for o in gc.get_referents(log)} == {id(r) for r in more[1:]}
    log.clear()
    assert gc.get_referents(log) == [] and first_record[0] is first


@needs_build
def test_the_gate_is_read_at_its_slot_and_generically_otherwise():
    """The compiled hooks read ``gate.auditor`` at the slot's offset once they saw the gate's
    type, and generically for any other gate: each hook records into the auditor its gate
    names now, through a change to the gate's class and a gate of another type."""
    from streamcheck._speedups import SetStreamHook, SwitchLog

    class SlottedGate:
        __slots__ = ("auditor",)

    logs = [SwitchLog(4) for _ in range(3)]
    slotted, plain = SlottedGate(), SimpleNamespace()
    slotted.auditor = SimpleNamespace(made_current=logs[0].append)
    plain.auditor = SimpleNamespace(made_current=logs[1].append)
    hooks = [SetStreamHook(gate, lambda stream: None, "ns.set_stream") for gate in (slotted, plain)]
    for hook in (*hooks, *hooks):
        hook(STREAM)
    assert (len(logs[0]), len(logs[1])) == (2, 2)
    slotted.auditor = SimpleNamespace(made_current=logs[2].append)
    SlottedGate.note = "the class changed: its version tag with it"
    hooks[0](STREAM)
    assert (len(logs[0]), len(logs[2])) == (2, 1)
    del slotted.auditor  # an empty slot: the generic read's own error
    with pytest.raises(AttributeError):
        hooks[0](STREAM)


@needs_build
def test_a_set_stream_hook_records_into_the_auditor_running_now_and_keeps_none_after():
    """The hook reads an auditor's ``made_current`` once; a later auditor (another audit, the
    same hook) gets its own switches, and once the audit stops the hook holds nothing of the
    last one (its log, with the streams in it, is freed)."""
    import weakref

    speedups.use("compiled")
    try:
        first = installer.install("record")
        hook = made_current_hook(installer._gate, lambda stream: None, "ns.set_stream")
        hook(STREAM)
        installer.uninstall()
        second = installer.install("record")
        hook(STREAM)
        hook(STREAM)
        assert (len(first.book._log), len(second.book._log)) == (1, 2)
        installer.uninstall()
        hook(STREAM)  # no audit: nothing recorded, and the hook forgets the last auditor
        gone = weakref.ref(second.book._log)
        del first, second
        gc.collect()
        assert gone() is None
    finally:
        speedups.use("auto")


def test_communicators_on_two_devices_are_each_judged_on_their_own(core):
    """A wrapper keeps the last communicator's device: launches alternating between one on
    cuda:0 and one on cuda:1, each with cuda:0's stream, are let through on the first and
    stopped on the second, every time."""
    audit_switching("two.all_reduce", 5, 0x7F05)
    here, there = SwitchingResolver(), SwitchingResolver()
    there.device = 1
    stream = SimpleNamespace(device_index=0, stream_id=5, cuda_stream=0x7F05)
    for _ in range(3):
        assert here.all_reduce(None, stream=stream) is stream
        with pytest.raises(StreamHazardError):
            there.all_reduce(None, stream=stream)


@needs_build
def test_a_gate_is_read_at_a_slot_only_where_python_would_read_that_slot():
    """A member descriptor taken from another class, or a gate class with its own
    ``__getattribute__``: the compiled read gives what Python's does (an error; the override's
    answer), never another slot's content."""
    from streamcheck._speedups import SetStreamHook, SwitchLog

    class Slotted:
        __slots__ = ("auditor",)

    class Borrowed:  # Slotted's descriptor, on a class it does not apply to
        __slots__ = ("other",)
        auditor = Slotted.__dict__["auditor"]

    log = SwitchLog(4)
    borrowed = Borrowed()
    borrowed.other = SimpleNamespace(made_current=log.append)
    with pytest.raises(TypeError):
        SetStreamHook(borrowed, lambda stream: None, "ns.set_stream")(STREAM)
    assert len(log) == 0

    class Overridden(Slotted):
        __slots__ = ()

        def __getattribute__(self, name):
            return None if name == "auditor" else object.__getattribute__(self, name)

    overridden = Overridden()
    overridden.auditor = SimpleNamespace(made_current=log.append)
    SetStreamHook(overridden, lambda stream: None, "ns.set_stream")(STREAM)
    assert len(log) == 0  # the override says no audit: nothing recorded


def test_a_communicator_the_wrapper_saw_is_freed_with_its_owner(core):
    """The wrapper knows the last communicator by a weak reference: dropping it frees it."""
    import weakref

    audit_switching("free.all_reduce", 5, 0x7F05)
    comm = SwitchingResolver()
    stream = SimpleNamespace(device_index=0, stream_id=5, cuda_stream=0x7F05)
    for _ in range(2):
        comm.all_reduce(None, stream=stream)
    gone = weakref.ref(comm)
    del comm
    gc.collect()
    assert gone() is None


@needs_build
def test_a_check_made_while_the_kept_stream_is_replaced_finds_the_cache_consistent():
    """Replacing the kept stream releases the old one, which may run code that launches: that
    launch's check must not find the new stream's flags on another stream (here a default
    stream from a thread that is not the engine's, which the Python wrapper must decide, let
    through)."""
    from streamcheck._speedups import StreamCheck

    owner = SimpleNamespace(main_engine=-1)  # not this thread
    gate = SimpleNamespace(auditor=owner)
    seen = []
    check = StreamCheck(gate, owner, itertools.count(), False, None, None)
    comm = SimpleNamespace(_streamcheck_device=0)
    default = SimpleNamespace(device_index=0, stream_id=0, cuda_stream=0)

    class LaunchesWhenFreed:
        device_index, stream_id = 0, 7

        def __del__(self):
            seen.append(check(comm, default))

    class LaunchesWhenRead:
        device_index = 0

        @property
        def stream_id(self):
            seen.append(check(comm, LaunchesWhenFreed()))
            return 5

    assert check(comm, default) is False
    assert check(comm, LaunchesWhenRead()) is True
    assert check(comm, default) is False  # not the id of the stream read meanwhile
    assert seen == [True, False]  # the nested checks: the freed one's, from __del__


@needs_build
def test_the_checks_bound_passes_method_answers_and_counts_as_calling_it():
    """The generated wrappers hold ``check.passes``: it must give the same answers and
    advance the same counter as calling the check, and refuse the same bad calls."""
    from streamcheck._speedups import StreamCheck

    owner = SimpleNamespace(main_engine=-1)  # not this thread
    gate = SimpleNamespace(auditor=owner)
    counter = itertools.count()
    check = StreamCheck(gate, owner, counter, False, None, None)
    comm = SimpleNamespace(_streamcheck_device=0)
    side = SimpleNamespace(device_index=0, stream_id=5, cuda_stream=0x7F05)
    elsewhere = SimpleNamespace(device_index=1, stream_id=5, cuda_stream=0x7F15)
    default = SimpleNamespace(device_index=0, stream_id=0, cuda_stream=0)
    for stream, fine in ((side, True), (elsewhere, False), (default, False)):
        assert check.passes(comm, stream) is fine
        assert check(comm, stream) is fine
    assert next(counter) == 2  # the side stream's two launches, one through each
    with pytest.raises(TypeError):
        check.passes(comm)
    gate.auditor = None  # the audit stopped: every launch goes ahead, uncounted
    assert check.passes(comm, elsewhere) is True
    assert next(counter) == 3
