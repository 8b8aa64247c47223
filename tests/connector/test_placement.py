"""The scheduler's placement: bounded slots, LRU eviction that never takes a pinned block."""

from __future__ import annotations

import pytest

from streamcheck.connector.placement import Placement


def saved(p: Placement, *hashes: str) -> list[int]:
    slots, evicted = p.reserve(list(hashes))
    assert evicted == []
    p.commit(hashes)
    return slots


def test_slots_are_handed_out_lowest_first_in_runs():
    p = Placement(8)
    assert saved(p, "a", "b", "c") == [0, 1, 2]
    assert saved(p, "d", "e") == [3, 4]
    assert p.slot("b") == 1 and p.used() == 5


def test_eviction_takes_the_least_recently_used_unpinned_block():
    p = Placement(4)
    saved(p, "a", "b")  # one prompt's chain: "b" was computed on top of "a"
    saved(p, "c")  # another prompt's
    p.pin(["c"])  # a load of "c" is in flight (and "c" becomes most recently used)
    slots, evicted = p.reserve(["d", "e"])
    assert evicted == ["b"] and slots == [3, 1]
    assert not p.is_committed("b") and p.is_committed("a") and p.is_committed("c")


def test_a_chains_tail_is_evicted_before_its_head_and_a_use_renews_the_head_last():
    p = Placement(3)
    saved(p, "h", "t1", "t2")  # committed head last: the tail is the least recently used
    assert p.reserve(["x"]) == ([2], ["t2"])
    p.commit(["x"])
    p.touch(["h", "t1"])  # a request used the chain: both newer than "x", the head newest
    assert p.reserve(["y"]) == ([2], ["x"])
    p.commit(["y"])
    assert p.reserve(["z"]) == ([1], ["t1"])  # the tail, then its head: never the other way


def test_a_pinned_block_is_never_evicted_and_saves_stop_when_nothing_is_free():
    p = Placement(2)
    saved(p, "a", "b")
    p.pin(["a", "b"])
    slots, evicted = p.reserve(["c", "d"])
    assert (slots, evicted) == ([], [])  # everything pinned: nothing saved
    p.unpin(["a"])
    slots, evicted = p.reserve(["c", "d"])
    assert (slots, evicted) == ([0], ["a"])  # a prefix of what was asked


def test_failed_saves_free_their_slots_and_are_never_served():
    p = Placement(4)
    slots, _ = p.reserve(["a", "b"])
    p.abandon(["b"])
    p.commit(["a"])
    assert p.is_committed("a") and not p.is_committed("b")
    assert p.reserve(["c"])[0] == [slots[1]]


def test_a_dropped_block_keeps_its_slot_while_another_load_reads_it():
    p = Placement(2)
    saved(p, "a", "b")
    p.pin(["a"])
    p.drop(["a"])  # another load found it corrupt; this one still reads the slot
    assert not p.is_committed("a")
    assert p.reserve(["c"]) == ([1], ["b"])  # slot 0 is still being read: "b" goes instead
    p.unpin(["a"])  # the last reader is done: the slot is free again
    assert p.reserve(["d"]) == ([0], [])



def test_asking_to_save_a_placed_block_is_an_error():
    p = Placement(4)
    saved(p, "a")
    with pytest.raises(ValueError, match="already stored"):
        p.reserve(["a"])

