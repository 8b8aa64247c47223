"""The compiled check of a connector's launch (``LaunchCheck``, streamcheck/_launch_check.c)
takes only a launch that plainly passes, and does with it what ``launch.check`` does: the same
count at its site, the same reads declared on its stream, at the same line. Anything else it
leaves, untouched, to the Python check, which finds and words the hazard as before. The
compiled cases are skipped, and say so, where the extension is not built."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

import streamcheck
from streamcheck import installer
from streamcheck.core.errors import StreamHazardError
from streamcheck.wrappers import speedups, user_launch
from tests.wrappers.compiled_parts import (
    MAIN_ID,
    SIDE,
    SIDE_ID,
    FakeTensor,
    current_line,
    site_line,
)

OTHER = SimpleNamespace(device_index=0, stream_id=9, cuda_stream=0x7F09)
LEGACY = SimpleNamespace(device_index=0, stream_id=0, cuda_stream=0)


def ordered_handoff(aud, tensor=None):
    """The engine's handoff on its current stream, and SIDE made to wait for it (what
    ``SIDE.wait_stream(main)`` tells the clocks)."""
    made = streamcheck.handoff(tensor if tensor is not None else FakeTensor())
    aud.clocks.take_in((0, SIDE_ID), aud.clocks.clock_of((0, MAIN_ID)))
    return made


def kept_reads(aud) -> dict:
    return {key: [(h.stream.key, h.access, h.blocks, h.thread.name) for h in handoffs]
            for key, handoffs in aud._reads.items()}


def test_the_compiled_core_chooses_the_compiled_check_and_handoff_and_python_none():
    """The launch check and the handoff (tests/wrappers/test_compiled_handoff.py) both."""
    speedups.use("python")
    try:
        assert user_launch._fast_check is None and user_launch._fast_declare is None
    finally:
        speedups.use("auto")
    built = speedups.built()
    assert type(user_launch._fast_check).__name__ == ("LaunchCheck" if built else "NoneType")
    assert type(user_launch._fast_declare).__name__ == (
        "HandoffDeclare" if built else "NoneType")


def test_an_ordered_read_is_counted_and_declared_as_python_does(audit):
    """Both cores: one count, the read kept on the launch's stream, the site the ``with``
    line; with the compiled check the thread's current stream is not read at all (an
    explicit stream's launch is not checked against it)."""
    aud = audit.aud
    handoff = ordered_handoff(aud)
    aud.coverage.counter("kv.save")  # made: the first launch of a name is Python's
    before = audit.reads["n"]
    with streamcheck.launch("kv.save", stream=SIDE, device=0, reads=[handoff, None, handoff]):
        line = current_line() - 1
    assert aud.coverage.launches_by_op()["kv.save"] == 1
    assert kept_reads(aud) == {(0, 0x1000): [((0, SIDE_ID), "read", None, "MainThread")]}
    (read,) = aud._reads[(0, 0x1000)]
    assert site_line(read) == (__file__, line)
    assert audit.reads["n"] - before == (0 if audit.core == "compiled" else 1)
    assert not aud.findings()


def test_the_decorator_keeps_the_caller_line_too(audit):
    aud = audit.aud
    handoff = ordered_handoff(aud)

    @streamcheck.launch("kv.save", stream=SIDE, device=0, reads=[handoff])
    def save() -> int:
        return 7

    assert save() == 7
    line = current_line() - 1
    (read,) = aud._reads[(0, 0x1000)]
    assert site_line(read) == (__file__, line)
    assert aud.coverage.launches_by_op()["kv.save"] == 1


def unordered(aud):
    """A launch on OTHER, which never waited for the handoff: an ``unsynced-handoff``."""
    return streamcheck.launch("kv.save", stream=OTHER, device=0,
                              reads=[streamcheck.handoff(FakeTensor())])


@pytest.mark.parametrize("case", ["unordered", "writes", "resolved", "no stream", "legacy",
                                  "other device", "tensor read"])
def test_what_the_compiled_check_leaves_to_python_it_leaves_untouched(audit, case):
    """For every launch not plainly passing, the compiled check returns False having counted
    and declared nothing; Python's check then decides it as before."""
    if audit.core != "compiled":
        pytest.skip("the compiled check's own refusal (Python has none)")
    aud = audit.aud
    handoff = ordered_handoff(aud)
    made = {
        "unordered": lambda: unordered(aud),
        "writes": lambda: streamcheck.launch("kv.load", stream=SIDE, device=0,
                                             writes=[FakeTensor(0x2000)]),
        "resolved": lambda: streamcheck.launch("kv.save", stream=SIDE, device=0,
                                               resolved_from="a cache", reads=[handoff]),
        "no stream": lambda: streamcheck.launch("kv.save", device=0, reads=[handoff]),
        "legacy": lambda: streamcheck.launch("kv.save", stream=LEGACY, device=0,
                                             reads=[handoff]),
        "other device": lambda: streamcheck.launch("kv.save", stream=SIDE, device=1,
                                                   reads=[handoff]),
        "tensor read": lambda: streamcheck.launch("kv.save", stream=SIDE, device=0,
                                                  reads=[FakeTensor()]),
    }[case]()
    for op in ("kv.save", "kv.load"):  # the counters exist: only the case itself refuses
        aud.coverage.counter(op)
    reads, writes, counts = kept_reads(aud), dict(aud._writes), aud.coverage.launches_by_op()
    assert user_launch._fast_check(made) is False
    assert (kept_reads(aud), dict(aud._writes), aud.coverage.launches_by_op()) == (
        reads, writes, counts)


def test_an_unordered_read_raises_the_same_finding_in_both_cores(audit):
    aud = audit.aud
    ordered_handoff(aud)
    with pytest.raises(StreamHazardError, match="unsynced-handoff"), unordered(aud):
        pass
    assert aud.coverage.launches_by_op()["kv.save"] == 1
    assert [f.rule_id for f in aud.findings()] == ["unsynced-handoff"]


def test_a_site_first_seen_is_counted_once(audit):
    """The first launch of a name makes its counter (Python's part); the next are the
    compiled check's. Each is counted once."""
    aud = audit.aud
    handoff = ordered_handoff(aud)
    for _ in range(3):
        with streamcheck.launch("kv.first", stream=SIDE, device=0, reads=[handoff]):
            pass
    assert aud.coverage.launches_by_op()["kv.first"] == 3


def test_many_streams_each_declared_on_its_own(audit):
    """More streams than the compiled check keeps records of: each launch's reads are kept
    on its own stream, never another's."""
    aud = audit.aud
    streams = [SimpleNamespace(device_index=0, stream_id=100 + i, cuda_stream=0x7000 + i)
               for i in range(11)]
    handoff = streamcheck.handoff(FakeTensor())
    for stream in streams:
        aud.clocks.take_in((0, stream.stream_id), aud.clocks.clock_of((0, MAIN_ID)))
    for stream in streams * 2:
        with streamcheck.launch("kv.save", stream=stream, device=0, reads=[handoff]):
            pass
    kept = sorted(h.stream.stream_id for h in aud._reads[(0, 0x1000)])
    assert kept == [100 + i for i in range(11)]
    assert aud.coverage.launches_by_op()["kv.save"] == 22


def test_not_auditing_is_nothing_to_do():
    if not speedups.built():
        pytest.skip("streamcheck._speedups is not built here")
    installer.uninstall()
    check = speedups.active().LaunchCheck(
        user_launch.GATE, user_launch.launch, user_launch.Handoff, user_launch.Mark,
        user_launch._ref_of, 0)
    assert check(streamcheck.launch("kv.save", stream=SIDE)) is True
    assert check(object()) is False  # not a launch: Python's to refuse
    with pytest.raises(TypeError):
        check()


def test_a_launch_from_another_thread_names_that_thread(audit):
    aud = audit.aud
    handoff = ordered_handoff(aud)

    def save() -> None:
        with streamcheck.launch("kv.save", stream=SIDE, device=0, reads=[handoff]):
            pass

    worker = threading.Thread(target=save, name="kv-saver")
    worker.start()
    worker.join()
    assert kept_reads(aud) == {(0, 0x1000): [((0, SIDE_ID), "read", None, "kv-saver")]}


def test_a_save_reading_many_handoffs_declares_each_once(audit):
    """A save reads the handoffs of several layers' blocks, some named twice: each buffer's
    read is kept once, on the save's stream, in both cores."""
    aud = audit.aud
    made = [streamcheck.handoff(streamcheck.blocks(FakeTensor(0x1000 * (1 + i % 5)), {i, i + 1}))
            for i in range(12)]
    aud.clocks.take_in((0, SIDE_ID), aud.clocks.clock_of((0, MAIN_ID)))
    aud.coverage.counter("kv.save")
    with streamcheck.launch("kv.save", stream=SIDE, device=0, reads=made + made[:4]):
        pass
    kept = kept_reads(aud)
    assert sorted(kept) == [(0, 0x1000 * (1 + i)) for i in range(5)]
    assert sum(len(v) for v in kept.values()) == 12  # one read of each handoff's blocks
    assert all(stream == (0, SIDE_ID) for v in kept.values() for stream, *_ in v)
    assert aud.coverage.launches_by_op()["kv.save"] == 1


class InterruptedStream:
    """A stream whose first read of its device is interrupted (Ctrl-C landing in the audit's
    read of it)."""

    def __init__(self) -> None:
        self.reads = 0
        self.stream_id, self.cuda_stream = 13, 0x7F13

    @property
    def device_index(self) -> int:
        self.reads += 1
        if self.reads == 1:
            raise KeyboardInterrupt
        return 0


def test_an_interrupt_in_the_streams_read_is_never_swallowed(audit):
    """Python's check catches ordinary errors only; the compiled one hands those to it and
    lets an interrupt through as well, nothing counted."""
    aud = audit.aud
    handoff = ordered_handoff(aud)
    aud.coverage.counter("kv.save")
    interrupted = streamcheck.launch("kv.save", stream=InterruptedStream(), device=0,
                                     reads=[handoff])
    with pytest.raises(KeyboardInterrupt), interrupted:
        pass
    assert aud.coverage.launches_by_op()["kv.save"] == 0
