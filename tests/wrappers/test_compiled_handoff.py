"""The compiled handoff (``HandoffDeclare``, streamcheck/_handoffs.c) takes only the common
case of ``streamcheck.handoff(s)`` (tensors or their blocks, a given stream or a real tensor's
current one) and makes what the Python code makes: the same handoffs, on the same stream, kept the
same way, the site the caller's line. Anything else goes, untouched, to the Python code, which
warns or raises as before. The compiled cases are skipped, and say so, where the extension is
not built."""

from __future__ import annotations

import pytest

import streamcheck
from streamcheck import installer
from streamcheck.wrappers import user_launch
from tests.wrappers.compiled_parts import (
    MAIN_ID,
    SIDE,
    SIDE_ID,
    FakeTensor,
    current_line,
    needs_build,
    site_line,
)


class Index(int):
    """An int of another class: Python's ``int()`` reads it; the compiled path leaves it."""


def shape(handoff) -> tuple:
    return (handoff.tensor, handoff.stream.key, handoff.access, handoff.blocks,
            handoff.thread.name, handoff.mark.stream)


def test_a_handoff_on_the_current_stream_is_what_python_makes(audit):
    aud = audit.aud
    made = streamcheck.handoff(FakeTensor()); line = current_line()  # noqa: E702
    assert shape(made) == ((0, 0x1000), (0, MAIN_ID), "write", None, "MainThread",
                           (0, MAIN_ID))
    assert site_line(made) == (__file__, line)
    assert aud._writes[(0, 0x1000)] == [made]
    # the thread's current stream read at each call, never a kept one gone stale
    audit.current["id"] = 7
    again = streamcheck.handoff(FakeTensor())
    assert again.stream.key == (0, 7) and again.mark.tick == 1
    assert aud._writes[(0, 0x1000)] == [again]  # the newer write replaces the older


def test_handoffs_on_a_given_stream_and_reads(audit):
    aud = audit.aud
    a, b = FakeTensor(0x1000), FakeTensor(0x2000)
    two = streamcheck.handoffs((t for t in (a, b)), SIDE, access="read"); line = current_line()  # noqa: E702
    assert isinstance(two, tuple) and [shape(h) for h in two] == [
        ((0, 0x1000), (0, SIDE_ID), "read", None, "MainThread", (0, SIDE_ID)),
        ((0, 0x2000), (0, SIDE_ID), "read", None, "MainThread", (0, SIDE_ID))]
    assert two[0].mark == two[1].mark and two[0].stack == two[1].stack
    assert site_line(two[0]) == (__file__, line)
    assert aud._reads[(0, 0x1000)] == [two[0]] and aud._reads[(0, 0x2000)] == [two[1]]
    assert streamcheck.handoffs([]) == () and streamcheck.handoffs([], SIDE) == ()


def test_blocks_of_a_tensor_are_what_python_makes(audit):
    """A connector's declaration: some blocks of each layer's plane, on the current stream
    and on a given one; blocks of one buffer kept beside the other blocks of it."""
    aud = audit.aud
    kv = FakeTensor(0x4000)
    first = streamcheck.handoffs([streamcheck.blocks(kv, [0, 1])]); line = current_line()  # noqa: E702
    second = streamcheck.handoffs([streamcheck.blocks(kv, [2]), streamcheck.blocks(kv, [3])],
                                  SIDE, "write")
    assert [shape(h) for h in first + second] == [
        ((0, 0x4000), (0, MAIN_ID), "write", frozenset({0, 1}), "MainThread", (0, MAIN_ID)),
        ((0, 0x4000), (0, SIDE_ID), "write", frozenset({2}), "MainThread", (0, SIDE_ID)),
        ((0, 0x4000), (0, SIDE_ID), "write", frozenset({3}), "MainThread", (0, SIDE_ID))]
    assert site_line(first[0]) == (__file__, line)
    assert aud._writes[(0, 0x4000)] == [*first, *second]


def test_the_site_is_the_callers_with_python_s_declare_too(audit):
    """An auditor whose declare is the Python method (made under the Python core): the
    compiled handoff calls it with the same skip, and the site is still the caller's."""
    vars(audit.aud).pop("declare", None)
    made = streamcheck.handoff(FakeTensor(), SIDE); line = current_line()  # noqa: E702
    assert site_line(made) == (__file__, line) and made.stream.key == (0, SIDE_ID)


@needs_build
@pytest.mark.parametrize("audit", ["compiled"], indirect=True)
def test_the_compiled_handoff_takes_the_plain_cases_and_leaves_the_rest(audit, monkeypatch):
    """With the compiled core the plain cases (whole tensors and their blocks) never reach
    Python's code; every other one does, and is made there (an int of another class, an
    unknown access)."""
    taken: list[int] = []
    python_declare = user_launch._declare_accesses

    def counted(items, stream, access):
        taken.append(len(items))
        return python_declare(items, stream, access)

    monkeypatch.setattr(user_launch, "_declare_accesses", counted)
    streamcheck.handoff(FakeTensor())
    streamcheck.handoff(FakeTensor(), SIDE, access="read")
    streamcheck.handoffs([FakeTensor(0x1000), FakeTensor(0x2000)], SIDE)
    assert taken == []
    streamcheck.handoffs([streamcheck.blocks(FakeTensor(), [0, 2])])
    assert taken == []
    other = streamcheck.handoff(FakeTensor(device=Index(0)), SIDE)
    assert other.tensor == (0, 0x1000) and type(other.tensor[0]) is int and taken == [1]
    blocks = streamcheck.handoff(streamcheck.blocks(FakeTensor(address=Index(8)), [1]))
    assert blocks.tensor == (0, 8) and blocks.blocks == frozenset({1}) and taken == [1, 1]
    with pytest.raises(ValueError, match="access must be"):
        streamcheck.handoff(FakeTensor(), SIDE, access="readwrite")
    assert taken == [1, 1, 1]


def test_an_unreadable_tensor_warns_and_an_interrupt_propagates(audit, monkeypatch):
    from streamcheck.wrappers import launches

    monkeypatch.setattr(launches, "_warned", set())  # said once per process: say it here
    aud = audit.aud
    with pytest.warns(RuntimeWarning, match="streamcheck.handoff"):
        assert streamcheck.handoff(FakeTensor(device=RuntimeError("no device"))) is None
    assert not aud._writes
    with pytest.raises(KeyboardInterrupt):
        streamcheck.handoff(FakeTensor(device=KeyboardInterrupt()))
    assert not aud._writes


def test_not_auditing_makes_nothing():
    assert installer.current_auditor() is None
    assert streamcheck.handoff(FakeTensor()) is None
    assert streamcheck.handoffs([FakeTensor()]) == ()
