"""Happens-before: a handoff read is clean only after a wait on an event recorded after it."""

from __future__ import annotations

from streamcheck.core.auditor import Auditor
from streamcheck.core.clocks import HappensBefore
from streamcheck.core.ids import StreamRef
from streamcheck.core.modes import Mode
from tests.core.fakes import in_thread

ENGINE = StreamRef(0, 3)
SAVE = StreamRef(0, 9)
KV = (0, 0xABC000)


def test_clock_query():
    hb = HappensBefore()
    early = hb.mark(ENGINE.key)
    hb.record(1, ENGINE.key)  # event after the first mark
    late = hb.mark(ENGINE.key)
    hb.wait(SAVE.key, 1)
    assert hb.ordered(SAVE.key, early)
    assert not hb.ordered(SAVE.key, late)  # the event was recorded before this handoff
    assert hb.ordered(ENGINE.key, late)  # same stream: in order
    hb.wait(SAVE.key, 99)  # never recorded: orders nothing
    assert not hb.ordered(SAVE.key, late)


def test_unsynced_handoff_positive_names_the_engine_thread():
    aud = Auditor(Mode.RECORD)
    handoff = aud.handoff(KV, ENGINE)
    aud.clocks.record(7, ENGINE.key)  # recorded, but the save stream never waits on it
    found, _ = in_thread(lambda: aud.review("kv.save", SAVE, None, 0, implicit=False,
                                            reads=(handoff,)), name="kv-connector")
    assert [f.rule_id for f in found] == ["unsynced-handoff"]
    assert found[0].other_thread == handoff.thread and "kv-connector" in found[0].message


def test_unsynced_handoff_clean_after_waiting_on_a_later_event():
    aud = Auditor(Mode.RECORD)
    handoff = aud.handoff(KV, ENGINE)
    aud.clocks.record(7, ENGINE.key)
    aud.clocks.wait(SAVE.key, 7)
    found, _ = in_thread(lambda: aud.review("kv.save", SAVE, None, 0, implicit=False,
                                            reads=(handoff,)))
    assert found == []


def test_admit_fast_path_respects_handoffs():
    aud = Auditor(Mode.RECORD)
    handoff = aud.handoff(KV, ENGINE)
    aud.admit("kv.save", 0, 9, None, 0, 9, 0, implicit=False, reads=(handoff,))
    assert [f.rule_id for f in aud.findings()] == ["unsynced-handoff"]
