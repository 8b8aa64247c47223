"""Happens-before: a handoff read is clean only after a wait on an event recorded after it."""

from __future__ import annotations

import threading

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


def test_a_wait_takes_in_what_it_lacks_and_a_repeated_wait_changes_nothing():
    """A wait on a snapshot the stream already holds entry for entry keeps its clock (the
    same object: nothing allocated); one that brings a newer tick merges it, keeping the
    stream's own higher entries."""
    hb = HappensBefore()
    first = hb.mark(ENGINE.key)
    hb.record(1, ENGINE.key)
    hb.wait(SAVE.key, 1)
    taken = hb.clock_of(SAVE.key)
    hb.wait(SAVE.key, 1)
    assert hb.clock_of(SAVE.key) is taken and hb.ordered(SAVE.key, first)
    own = hb.mark(SAVE.key)  # the waiting stream moves on past what it took in
    second = hb.mark(ENGINE.key)
    hb.record(2, ENGINE.key)
    hb.wait(SAVE.key, 2)
    assert hb.ordered(SAVE.key, second) and hb.ordered(SAVE.key, own)
    assert hb.clock_of(SAVE.key) == {ENGINE.key: second.tick, SAVE.key: own.tick}


def test_ordering_begins_at_the_first_declared_access():
    """The hooks' one-attribute test: False until a handoff; the callback runs once then, or at
    once when it is given after (a surface hooked again while the audit runs)."""
    aud = Auditor(Mode.RECORD)
    calls = []
    aud.on_first_access(lambda: calls.append("first"))
    assert not aud.ordering and calls == []
    aud.handoff(KV, ENGINE)
    aud.handoff(KV, ENGINE)
    assert aud.ordering and calls == ["first"]
    aud.on_first_access(lambda: calls.append("late"))
    assert calls == ["first", "late"]


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


# --- write-after-read / write-after-write: a write must be ordered after the buffer's latest
# write and every read declared since (vllm#47282, vllm#50696).

LOAD = StreamRef(0, 11)
BLOCK = (0, 0xB10C00)


def _write(aud: Auditor, stream: StreamRef = LOAD) -> list:
    target = aud.write_target(BLOCK)
    return aud.review("kv.load", stream, None, 0, implicit=False, writes=(target,))


def test_write_after_read_positive_names_the_reading_thread():
    aud = Auditor(Mode.RECORD)
    read, _ = in_thread(lambda: aud.handoff(BLOCK, ENGINE, access="read"), name="engine")
    found = _write(aud)
    assert [f.rule_id for f in found] == ["write-after-read"]
    assert found[0].other_thread == read.thread and "engine" in found[0].message


def test_write_after_read_clean_after_waiting_on_an_event_recorded_after_the_read():
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, ENGINE, access="read")
    aud.clocks.record(5, ENGINE.key)
    aud.clocks.wait(LOAD.key, 5)
    assert _write(aud) == []


def test_write_after_read_event_recorded_before_the_read_orders_nothing():
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, ENGINE, access="write")
    aud.clocks.record(5, ENGINE.key)  # recorded before the read below
    aud.handoff(BLOCK, ENGINE, access="read")
    aud.clocks.wait(LOAD.key, 5)
    assert [f.rule_id for f in _write(aud)] == ["write-after-read"]


def test_write_after_read_same_stream_is_in_order():
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, LOAD, access="read")
    assert _write(aud) == []


def test_write_after_write_positive_and_clean_after_an_event():
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, ENGINE, access="write")  # the compute stream zeroes the fresh block
    assert [f.rule_id for f in _write(aud)] == ["write-after-write"]
    aud.clocks.record(6, ENGINE.key)
    aud.clocks.wait(LOAD.key, 6)
    assert _write(aud) == []


def test_a_later_write_supersedes_the_reads_before_it():
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, SAVE, access="read")
    aud.handoff(BLOCK, ENGINE, access="write")  # itself a finding if it was unordered
    target = aud.write_target(BLOCK)
    assert target.reads == () and len(target.writes) == 1
    assert target.writes[0].stream == ENGINE


def test_reads_are_kept_once_per_stream():
    aud = Auditor(Mode.RECORD)
    for _ in range(5):
        aud.handoff(BLOCK, ENGINE, access="read")
    aud.handoff(BLOCK, SAVE, access="read")
    assert len(aud.write_target(BLOCK).reads) == 2


def test_admit_fast_path_respects_writes():
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, ENGINE, access="read")
    aud.admit("kv.load", 0, 11, None, 0, 11, 0, implicit=False,
              writes=(aud.write_target(BLOCK),))
    assert [f.rule_id for f in aud.findings()] == ["write-after-read"]


def test_unknown_access_is_refused():
    import pytest

    with pytest.raises(ValueError, match="access must be"):
        Auditor(Mode.RECORD).handoff(BLOCK, ENGINE, access="modify")


def test_host_waits_order_everything_queued_after_them():
    hb = HappensBefore()
    read = hb.mark(ENGINE.key)
    assert not hb.ordered(LOAD.key, read)
    hb.device_synchronized(1)  # another device: says nothing about this one
    assert not hb.ordered(LOAD.key, read)
    hb.device_synchronized(0)
    assert hb.ordered(LOAD.key, read)


def test_stream_synchronize_covers_that_stream_and_what_it_waited_for():
    hb = HappensBefore()
    engine_mark = hb.mark(ENGINE.key)
    hb.record(1, ENGINE.key)
    hb.wait(SAVE.key, 1)
    save_mark = hb.mark(SAVE.key)
    hb.host_waited_for(hb.clock_of(SAVE.key))  # stream.synchronize() on SAVE returned
    assert hb.ordered(LOAD.key, save_mark) and hb.ordered(LOAD.key, engine_mark)
    late = hb.mark(ENGINE.key)  # queued after the host's wait: not covered
    assert not hb.ordered(LOAD.key, late)


def test_a_repeated_host_wait_keeps_the_done_clock_and_a_new_tick_still_counts():
    """A poll that sees the same work done again changes nothing (the done clock is the same
    object: nothing copied); one that sees newer work merges it."""
    hb = HappensBefore()
    hb.mark(SAVE.key)
    hb.host_waited_for(hb.clock_of(SAVE.key))
    done = hb.done_clock()
    hb.host_waited_for(hb.clock_of(SAVE.key))
    assert hb.done_clock() is done
    newer = hb.mark(SAVE.key)
    hb.host_waited_for(hb.clock_of(SAVE.key))
    assert hb.done_clock() is not done and hb.ordered(LOAD.key, newer)


def test_event_synchronize_covers_its_snapshot_only():
    hb = HappensBefore()
    early = hb.mark(ENGINE.key)
    hb.record(2, ENGINE.key)
    late = hb.mark(ENGINE.key)
    hb.event_synchronized(2)
    assert hb.ordered(LOAD.key, early) and not hb.ordered(LOAD.key, late)


def test_record_stream_orders_the_next_owner_of_the_memory_after_that_stream():
    """DeepSpeed#7965's fix: a buffer read on a side stream is recorded there before it is
    dropped; the allocator hands the address out only after that work, so the next owner's
    write is no write-after-read (the clocks cannot see the allocator's own event)."""
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, SAVE, access="read")
    aud.handoff(BLOCK, ENGINE, access="read")
    aud.fenced_by_allocator(BLOCK, SAVE.key)
    assert [r.stream for r in aud.write_target(BLOCK).reads] == [ENGINE]


def test_record_stream_hook_feeds_the_auditor():
    from streamcheck.wrappers.events import hook_record_stream
    from streamcheck.wrappers.gate import Gate
    from streamcheck.wrappers.registry import PatchRegistry

    class FakeTensor:
        def record_stream(self, stream):
            self.recorded = stream

    class FakeStream:
        device_index, stream_id = 0, 11

    gate, registry = Gate(), PatchRegistry()
    gate.auditor = aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, LOAD, access="read")
    hook_record_stream(registry, gate, FakeTensor, lambda t: BLOCK)
    tensor = FakeTensor()
    tensor.record_stream(FakeStream())
    assert tensor.recorded is not None and aud.write_target(BLOCK).reads == ()
    registry.restore_all()
    assert "record_stream" in FakeTensor.__dict__ and not hasattr(FakeTensor.record_stream,
                                                                   "__wrapped__")


# --- unordered-stream-switch (vllm#56382): the consumer stream was created by the producing
# thread after it produced the tensor, and never waited for the old stream.

FRESH = StreamRef(0, 21)


def _created(aud: Auditor, stream: StreamRef, when: float) -> None:
    from streamcheck.core.ids import ThreadRef
    from streamcheck.core.records import StreamEvent

    me = threading.get_ident()
    aud.book.record(StreamEvent("created", stream, ThreadRef(me, "worker", ""), when,
                                via="torch.cuda.Stream()"))


def _consume(aud: Auditor, handoff, stream: StreamRef = FRESH) -> list:
    return aud.review("moe.shared_experts", stream, None, 0, implicit=False, reads=(handoff,))


def test_unordered_stream_switch_positive_replaces_unsynced_handoff():
    aud = Auditor(Mode.RECORD)
    produced = aud.handoff(KV, ENGINE)
    _created(aud, FRESH, produced.time + 1.0)
    assert [f.rule_id for f in _consume(aud, produced)] == ["unordered-stream-switch"]


def test_unordered_stream_switch_clean_when_the_new_stream_waited():
    aud = Auditor(Mode.RECORD)
    produced = aud.handoff(KV, ENGINE)
    _created(aud, FRESH, produced.time + 1.0)
    aud.clocks.record(3, ENGINE.key)  # new.wait_stream(old): an event on the old stream ...
    aud.clocks.wait(FRESH.key, 3)  # ... waited on by the new one
    assert _consume(aud, produced) == []


def test_a_stream_made_before_the_write_is_an_unsynced_handoff_not_a_switch():
    aud = Auditor(Mode.RECORD)
    _created(aud, FRESH, 0.0)
    produced = aud.handoff(KV, ENGINE)
    assert [f.rule_id for f in _consume(aud, produced)] == ["unsynced-handoff"]


def test_another_threads_producer_is_an_unsynced_handoff_not_a_switch():
    aud = Auditor(Mode.RECORD)
    produced, _ = in_thread(lambda: aud.handoff(KV, ENGINE), name="engine")
    _created(aud, FRESH, produced.time + 1.0)
    assert [f.rule_id for f in _consume(aud, produced)] == ["unsynced-handoff"]


def test_a_switch_case_is_an_unsynced_handoff_when_the_switch_rule_is_not_selected():
    aud = Auditor(Mode.RECORD, select=frozenset({"unsynced-handoff"}))
    produced = aud.handoff(KV, ENGINE)
    _created(aud, FRESH, produced.time + 1.0)
    assert [f.rule_id for f in _consume(aud, produced)] == ["unsynced-handoff"]


# --- block accesses: one buffer per layer, blocks of different requests on different streams


def _write_blocks(aud: Auditor, blocks, stream: StreamRef = LOAD) -> list[str]:
    target = aud.write_target(BLOCK, frozenset(blocks))
    found = aud.review("kv.load", stream, None, 0, implicit=False, writes=(target,))
    return [f.rule_id for f in found]


def test_writes_to_other_blocks_of_the_buffer_are_not_a_hazard():
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, ENGINE, access="write", blocks=frozenset({1, 2}))  # the forward's
    aud.handoff(BLOCK, ENGINE, access="read", blocks=frozenset({3}))
    assert _write_blocks(aud, {4, 5}) == []
    assert _write_blocks(aud, {2, 9}) == ["write-after-write"]
    assert _write_blocks(aud, {3}) == ["write-after-read"]


def test_a_whole_buffer_access_overlaps_every_block():
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, ENGINE, access="read")
    assert _write_blocks(aud, {7}) == ["write-after-read"]
    aud2 = Auditor(Mode.RECORD)
    aud2.handoff(BLOCK, ENGINE, access="read", blocks=frozenset({7}))
    target = aud2.write_target(BLOCK)  # a write of the whole buffer
    assert [r.blocks for r in target.reads] == [frozenset({7})]


def test_a_write_drops_only_the_accesses_it_covers():
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, ENGINE, access="read", blocks=frozenset({1}))
    aud.handoff(BLOCK, ENGINE, access="read", blocks=frozenset({2}))
    aud.handoff(BLOCK, SAVE, access="write", blocks=frozenset({1, 3}))
    target = aud.write_target(BLOCK)
    assert [r.blocks for r in target.reads] == [frozenset({2})]
    aud.handoff(BLOCK, LOAD, access="write", blocks=frozenset({1, 3, 4}))
    assert [w.stream for w in aud.write_target(BLOCK).writes] == [LOAD]


def test_a_read_replaces_the_same_streams_reads_it_covers_only():
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, ENGINE, access="read", blocks=frozenset({1}))
    aud.handoff(BLOCK, SAVE, access="read", blocks=frozenset({1}))
    aud.handoff(BLOCK, ENGINE, access="read", blocks=frozenset({1, 2}))
    assert sorted(r.stream.stream_id for r in aud.write_target(BLOCK).reads) == [3, 9]


def test_a_read_keeps_another_devices_read_on_a_stream_of_the_same_id():
    """Streams are told apart by (device, id): ids repeat across devices."""
    aud = Auditor(Mode.RECORD)
    aud.handoff(BLOCK, StreamRef(0, 9), access="read", blocks=frozenset({1}))
    aud.handoff(BLOCK, StreamRef(1, 9), access="read", blocks=frozenset({1, 2}))
    aud.handoff(BLOCK, StreamRef(1, 9), access="read")  # the whole buffer, same stream
    assert sorted((r.stream.device, r.blocks) for r in aud.write_target(BLOCK).reads) == [
        (0, frozenset({1})), (1, None)]


def test_accesses_kept_per_buffer_are_bounded():
    from streamcheck.core.auditor import MAX_ACCESSES

    aud = Auditor(Mode.RECORD)
    for block in range(MAX_ACCESSES + 10):
        aud.handoff(BLOCK, ENGINE, access="read", blocks=frozenset({block}))
    reads = aud.write_target(BLOCK).reads
    assert len(reads) == MAX_ACCESSES
    assert reads[0].blocks == frozenset({10})  # the oldest were forgotten


def test_the_clocks_keep_their_state_where_the_compiled_hooks_look_for_it():
    """The compiled event hooks read a stream's clock from the attribute named
    ``STREAM_CLOCKS_ATTR`` and an event's snapshot from ``SNAPSHOT_ATTR``: renaming either here
    must fail this, not leave the compiled hooks reading something else."""
    from streamcheck.core.clocks import SNAPSHOT_ATTR, STREAM_CLOCKS_ATTR, HappensBefore

    hb = HappensBefore()
    hb.mark((0, 5))
    assert vars(hb)[STREAM_CLOCKS_ATTR] == {(0, 5): {(0, 5): 1}}
    event = type("Event", (), {})()
    hb.record(event, (0, 5))
    assert getattr(event, SNAPSHOT_ATTR) == {(0, 5): 1}
