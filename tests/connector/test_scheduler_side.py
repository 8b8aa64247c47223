"""``SchedulerSide`` alone (no vLLM): lookups, partial hits, parking, block lifetime, step cost."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from streamcheck.connector import scheduler_side
from streamcheck.connector.keys import block_hashes
from streamcheck.connector.placement import Placement
from streamcheck.connector.scheduler_side import SchedulerSide

BS = 4


def prompt(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + i * 104729) % 50_000 + 1 for i in range(n)]


def commit(side: SchedulerSide, tokens: list[int], blocks: int | None = None) -> list[str]:
    hashes = block_hashes(tokens, BS, side.namespace)[:blocks]
    side.committed.update(hashes)
    return hashes


def placed_side(capacity: int = 20) -> SchedulerSide:
    """A scheduler whose store it places (``capacity`` blocks), as the host slab's is."""
    return SchedulerSide(BS, placement=Placement(capacity))


def saved(side: SchedulerSide, req: str, tokens: list[int], blocks: list[int],
          computed: int | None = None, ok: bool = True) -> list[str]:
    """``req`` computed up to ``computed`` tokens (default all) and its saves ended ``ok``:
    the hashes of the groups planned."""
    side.track(req, tokens)
    planned = []
    for save in side.build([(req, blocks, True, computed or len(tokens))]).saves:
        side.on_worker_report({save.group: 1} if ok else {}, {} if ok else {save.group: 1},
                              (), ())
        planned += save.hashes
    return planned


def test_matched_tokens_counts_leading_committed_blocks_beyond_computed():
    side = SchedulerSide(BS)
    p = prompt(1, 4 * BS + 2)
    commit(side, p)
    assert side.matched_tokens("r", p, 0) == (4 * BS, True)
    assert side.matched_tokens("r", p, BS) == (3 * BS, True)  # vLLM had one block locally
    assert side.matched_tokens("r", p, 4 * BS) == (0, False)
    assert side.matched_tokens("r", p, 0) == (4 * BS, True)  # repeatable


def test_a_full_prompt_hit_leaves_the_last_token_to_compute():
    """A prompt ending on a block boundary, all stored: every block is loaded and one token
    is left to compute (a one-token step, not a block's), as vLLM's own connectors do. Async:
    the whole prompt is reported and vLLM's scheduler takes the last token back itself; sync:
    the count stops a token short, since the scheduler must have a token to schedule."""
    p = prompt(2, 3 * BS)
    side = SchedulerSide(BS)
    commit(side, p)
    assert side.matched_tokens("r", p, 0) == (3 * BS, True)
    side.after_alloc("r", [10, 11, 12], 3 * BS)
    assert side.parked["r"].block_ids == [10, 11, 12]
    sync = SchedulerSide(BS, sync_loads=True)
    commit(sync, p)
    assert sync.matched_tokens("r", p, 0) == (3 * BS - 1, False)
    sync.after_alloc("r", [10, 11, 12], 3 * BS - 1)
    assert [plan.block_ids for plan in sync.build([]).loads] == [[10, 11, 12]]


def test_the_last_block_alone_is_loaded_only_when_the_load_is_sync():
    """vLLM's own cache holds all but the last block: an async load of it would cost an
    engine step more than computing it; a sync load costs the block's copy."""
    p = prompt(3, 3 * BS)
    side, sync = SchedulerSide(BS), SchedulerSide(BS, sync_loads=True)
    commit(side, p)
    commit(sync, p)
    assert side.matched_tokens("r", p, 2 * BS) == (0, False)
    assert sync.matched_tokens("r", p, 2 * BS) == (BS - 1, False)
    sync.after_alloc("r", [10, 11, 12], BS - 1)
    assert [(plan.block_ids, plan.first) for plan in sync.build([]).loads] == [([12], 2)]


def test_a_prompt_past_a_block_boundary_loads_its_full_blocks_only():
    p = prompt(4, 3 * BS + 1)
    for side in (SchedulerSide(BS), SchedulerSide(BS, sync_loads=True)):
        commit(side, p)
        assert side.matched_tokens("r", p, 0) == (3 * BS, not side.sync_loads)
    side = SchedulerSide(BS)
    hashes = commit(side, p)
    side.committed.discard(hashes[2])  # the last block of the prompt is not stored
    assert side.matched_tokens("r", prompt(4, 3 * BS), 0) == (2 * BS, True)


@pytest.mark.parametrize("sync", [False, True])
def test_the_block_a_full_hit_computes_its_last_token_into_is_the_requests_own(sync: bool):
    """The request computes the prompt's last token into its loaded last block, so that GPU
    block is no longer the store's copy: a request that gets it from vLLM's cache and goes on
    past it must not save its later blocks on the store's copy (they were computed on this
    one); the block itself is not saved again."""
    side = SchedulerSide(BS, placement=Placement(20), sync_loads=sync)
    p = prompt(5, 3 * BS)
    assert len(saved(side, "A", p, [0, 1, 2])) == 3
    side.finished("A")
    got, _ = side.matched_tokens("R", p, 0)
    side.after_alloc("R", [10, 11, 12], got)
    meta = side.build([("R", [10, 11, 12], True, 3 * BS)])  # the load's step / the forward's
    assert meta.saves == [] and [plan.block_ids for plan in meta.loads] == [[10, 11, 12]]
    if not sync:
        side.on_worker_report({}, {}, (), {"R"})
        assert side.build([("R", [10, 11, 12], True, 3 * BS)]).saves == []  # the one token
    longer = p + prompt(6, 2 * BS + 1)
    side.track("X", longer)
    side.matched_tokens("X", longer, 3 * BS)  # vLLM's cache gives it R's three blocks
    assert side.build([("X", [10, 11, 12, 20, 21, 22], True, len(longer))]).saves == []
    other = p[:2 * BS] + prompt(7, 2 * BS + 1)  # on R's loaded blocks only: saved
    side.track("Y", other)
    side.matched_tokens("Y", other, 2 * BS)
    assert len(side.build([("Y", [10, 11, 30, 31, 32], True, len(other))]).saves) == 1


@pytest.mark.parametrize("sync", [False, True])
def test_a_request_sharing_the_block_in_the_same_step_does_not_save_on_the_stores_copy(sync):
    """A resumed request loads the whole prompt; a new one, given that last block by vLLM's
    cache in the same step, comes first in the step's list (new requests are listed before
    resumed ones): the block is already the resumed request's own computation then."""
    side = SchedulerSide(BS, placement=Placement(40), sync_loads=sync)
    p = prompt(8, 3 * BS)
    assert len(saved(side, "X", p, [0, 1, 2])) == 3
    side.finished("X")
    side.track("R", p)
    side.preempted("R")
    side.build([])
    got, _ = side.matched_tokens("R", p, 0)
    side.after_alloc("R", [10, 11, 12], got)
    if not sync:
        side.build([])  # the load's step
        side.on_worker_report({}, {}, (), {"R"})
    longer = p + prompt(9, 2 * BS + 1)
    side.track("Z", longer)
    side.matched_tokens("Z", longer, 3 * BS)
    meta = side.build([("Z", [10, 11, 12, 20, 21, 22], True, len(longer)),
                       ("R", [10, 11, 12], True, 3 * BS)])
    assert meta.saves == []


def test_partial_hit_stops_at_the_first_missing_block():
    side = SchedulerSide(BS)
    p = prompt(3, 5 * BS)
    hashes = block_hashes(p, BS)
    side.committed.update([hashes[0], hashes[1], hashes[3]])
    assert side.matched_tokens("r", p, 0) == (2 * BS, True)
    other = p[:2 * BS + 1] + prompt(4, 3 * BS)  # shares two blocks, diverges inside the third
    assert side.matched_tokens("o", other, 0) == (2 * BS, True)
    assert side.matched_tokens("n", prompt(5, 4 * BS), 0) == (0, False)


def test_load_is_planned_after_the_local_prefix_and_parks_the_request():
    side = SchedulerSide(BS)
    p = prompt(6, 4 * BS + 1)
    hashes = commit(side, p)
    assert side.matched_tokens("r", p, BS) == (3 * BS, True)
    side.after_alloc("r", [10, 11, 12, 13, 14], 3 * BS)
    plan = side.parked["r"]
    assert (plan.block_ids, plan.hashes, plan.first) == ([11, 12, 13], hashes[1:4], 1)
    meta = side.build([])
    assert meta.loads == [plan]
    assert side.build([]).loads == []  # sent once
    side.on_worker_report({}, {}, (), {"r"})
    assert "r" not in side.parked


def test_no_load_planned_without_external_tokens():
    side = SchedulerSide(BS)
    p = prompt(7, 3 * BS)
    side.matched_tokens("r", p, 0)
    side.after_alloc("r", [1, 2, 3], 0)
    assert side.parked == {} and side.build([]).loads == []


def test_saves_cover_newly_full_prompt_blocks_not_already_committed():
    side = SchedulerSide(BS)
    p = prompt(8, 4 * BS + 2)
    hashes = block_hashes(p, BS)
    side.committed.add(hashes[1])
    side.track("r", p)
    assert side.matched_tokens("r", p, 2 * BS) == (0, False)  # vLLM holds the first two
    meta = side.build([("r", [5, 6, 7], True, 2 * BS + 3)])  # chunk 1: 11 tokens
    assert [(s.block_ids, s.hashes) for s in meta.saves] == [([5], [hashes[0]])]
    meta = side.build([("r", [8, 9], False, 4 * BS + 2)])  # chunk 2: the rest of the prompt
    assert [(s.block_ids, s.hashes) for s in meta.saves] == [([7, 8], hashes[2:4])]
    assert side.build([("r", None, False, 4 * BS + 3)]).saves == []  # decode: nothing new


def test_a_group_commits_only_when_every_worker_saved_it():
    side = SchedulerSide(BS, workers=2)
    p = prompt(9, 2 * BS + 1)
    side.track("r", p)
    (save,) = side.build([("r", [1, 2, 3], True, 2 * BS + 1)]).saves
    side.on_worker_report({save.group: 1}, {}, (), ())
    assert side.matched_tokens("x", p, 0) == (0, False)
    side.on_worker_report({save.group: 1}, {}, (), ())
    assert side.matched_tokens("x", p, 0) == (2 * BS, True)


def test_a_group_failed_on_any_worker_is_never_served():
    side = SchedulerSide(BS, workers=2)
    p = prompt(10, 2 * BS + 1)
    side.track("r", p)
    (save,) = side.build([("r", [1, 2, 3], True, 2 * BS + 1)]).saves
    side.on_worker_report({save.group: 1}, {save.group: 1}, (), ())
    assert not side.committed
    assert side.matched_tokens("x", p, 0) == (0, False)


def loading(side: SchedulerSide) -> tuple[list[int], list[str]]:
    """A prompt of 4 blocks that "w" saved, and "r" loading all of it (the load sent to the
    workers): the prompt and its hashes."""
    p = prompt(11, 4 * BS + 1)
    saved(side, "w", p, [20, 21, 22, 23, 24])
    side.finished("w")
    side.matched_tokens("r", p, 0)
    side.after_alloc("r", [1, 2, 3, 4, 5], 4 * BS)
    side.build([])
    return p, block_hashes(p, BS)


def test_missing_blocks_leave_the_index_and_are_saved_again():
    side = placed_side(8)
    p, hashes = loading(side)
    side.on_worker_report({}, {}, [hashes[2]], {"r"})  # block 2 failed to load
    # block 3 goes too: it was computed on the block 2 that is gone
    assert hashes[2] not in side.committed and hashes[3] not in side.committed
    assert side.matched_tokens("x", p, 0) == (2 * BS, True)
    meta = side.build([("r", [1, 2, 3, 4, 5], True, 4 * BS + 1)])  # vLLM recomputes 2 and 3
    assert [s.hashes for s in meta.saves] == [hashes[2:4]]


def test_a_failed_block_reported_before_the_load_ends_is_saved_again():
    """At TP > 1 one worker's failed block can reach the scheduler a step before every worker
    finished the load (vLLM reports a load only once all have): the blocks vLLM recomputes
    from there must still be saved again."""
    side = placed_side(8)
    _, hashes = loading(side)
    side.on_worker_report({}, {}, [hashes[2]], ())  # worker 0: block 2 failed
    side.on_worker_report({}, {}, (), {"r"})  # a step later: the load ended on every worker
    meta = side.build([("r", [1, 2, 3, 4, 5], True, 4 * BS + 1)])  # vLLM recomputes 2 and 3
    assert [s.hashes for s in meta.saves] == [hashes[2:4]]


def test_blocks_recomputed_after_a_failed_load_hold_the_requests_own_kv():
    """vLLM recomputes a failed load from its first failed block: those GPU blocks then hold
    the request's own computation, not the store's copy it asked for. A later request that
    finds them in vLLM's cache saves on top of them (the store holds the same copy)."""
    side = placed_side(12)
    p, hashes = loading(side)  # "r" loads blocks 0-3 into GPU blocks 1-4
    side.on_worker_report({}, {}, [hashes[2]], {"r"})  # block 2 failed: vLLM recomputes 2, 3
    (save,) = side.build([("r", [1, 2, 3, 4, 5], True, 4 * BS + 1)]).saves
    assert save.hashes == hashes[2:4]
    side.on_worker_report({save.group: 1}, {}, (), ())  # r's copies of blocks 2, 3 stored
    longer = p[:4 * BS] + prompt(12, 2 * BS)
    assert side.matched_tokens("x", longer, 4 * BS) == (0, False)  # all 4 in vLLM's cache
    meta = side.build([("x", [1, 2, 3, 4, 6, 7], True, 6 * BS)])
    assert [s.hashes for s in meta.saves] == [block_hashes(longer, BS)[4:6]]


def test_finished_with_open_saves_holds_blocks_and_is_named_once():
    side = SchedulerSide(BS)
    p = prompt(12, 2 * BS + 1)
    side.track("r", p)
    (save,) = side.build([("r", [1, 2, 3], True, 2 * BS + 1)]).saves
    assert side.finished("r") is True
    assert side.build([]).delayed == ["r"]
    assert side.build([]).delayed == []
    side.on_worker_report({save.group: 1}, {}, (), ())
    assert side._requests == {} and side.committed


def test_finished_without_open_saves_is_freed_at_once():
    side = SchedulerSide(BS)
    side.track("r", prompt(13, 2 * BS + 1))
    assert side.finished("r") is False
    assert side.build([]).delayed == [] and side._requests == {}
    assert side.finished("never-seen") is False


def test_preempted_request_is_named_once_and_holds_nothing():
    side = SchedulerSide(BS)
    p = prompt(14, 2 * BS + 1)
    side.track("r", p)
    side.build([("r", [1, 2, 3], True, 2 * BS + 1)])
    side.preempted("r")
    assert side.build([]).preempted == ["r"]
    assert side.build([]).preempted == []
    assert side.finished("r") is False  # its blocks are gone: nothing to hold


def test_aborted_parked_request_leaves_nothing_behind():
    side = SchedulerSide(BS)
    p = prompt(15, 3 * BS)
    commit(side, p)
    side.matched_tokens("r", p, 0)
    side.after_alloc("r", [1, 2, 3], 2 * BS)
    assert side.finished("r") is False
    assert side.parked == {} and side._requests == {}
    side.on_worker_report({}, {}, (), {"r"})  # the load ends later: ignored


# ---- the scheduler step costs the same however many requests are parked ------------------

class WalkCountingDict(dict):
    """A dict that counts every walk over its entries (the O(n) operations)."""

    walks = 0

    def _walk(self, name: str) -> Callable:
        def walk(*args: object) -> object:
            WalkCountingDict.walks += 1
            return getattr(dict, name)(self, *args)

        return walk

    def __iter__(self):  # type: ignore[override]
        return self._walk("__iter__")()

    def keys(self):  # type: ignore[override]
        return self._walk("keys")()

    def values(self):  # type: ignore[override]
        return self._walk("values")()

    def items(self):  # type: ignore[override]
        return self._walk("items")()


class WalkCountingSet(set):
    walks = 0

    def __iter__(self):  # type: ignore[override]
        WalkCountingSet.walks += 1
        return set.__iter__(self)


def lines_executed(fn: Callable[[], object]) -> int:
    """Python lines run inside scheduler_side.py while ``fn`` runs: a deterministic measure of
    the work done there (comprehensions and loops count once per iteration)."""
    target = scheduler_side.__file__
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame, event, arg):
        return local if frame.f_code.co_filename == target else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        fn()
    finally:
        sys.settrace(previous)
    return count


def one_step(side: SchedulerSide, parked: int) -> tuple[int, int, int]:
    """What vLLM asks of the scheduler side in one step with ``parked`` requests parked: plan
    four running requests, take a worker report (a closed group, a finished load), answer one
    new lookup, allocate it, finish one request. Returns (lines, dict walks, set walks)."""
    shared = prompt(0, 2 * BS + 1)
    commit(side, shared)
    for i in range(parked):
        side.matched_tokens(f"parked{i}", shared, 0)
        side.after_alloc(f"parked{i}", [3 * i, 3 * i + 1, 3 * i + 2], 2 * BS)
    side.build([])
    running = [(f"run{i}", prompt(100 + i, 4 * BS)) for i in range(4)]
    for req_id, tokens in running:
        side.track(req_id, tokens)
    (first,) = side.build([("run0", [1, 2, 3, 4], True, 3 * BS)]).saves
    side.matched_tokens("done-loading", shared, 0)
    side.after_alloc("done-loading", [7, 8, 9], 2 * BS)
    side.build([])
    side.parked = WalkCountingDict(side.parked)
    side.committed = WalkCountingSet(side.committed)
    WalkCountingDict.walks = WalkCountingSet.walks = 0
    new = prompt(200, 3 * BS + 1)

    def step() -> None:
        side.build([(r, [5, 6], False, 4 * BS) for r, _ in running])
        side.on_worker_report({first.group: 1}, {}, (), {"done-loading"})
        side.matched_tokens("new", new, 0)
        side.after_alloc("new", [1, 2, 3, 4], 0)
        side.finished("run3")

    lines = lines_executed(step)
    return lines, WalkCountingDict.walks, WalkCountingSet.walks


@pytest.mark.parametrize("parked", [10, 1_000, 10_000])
def test_step_work_does_not_grow_with_parked_requests(parked: int):
    baseline = one_step(SchedulerSide(BS), 1)
    lines, dict_walks, set_walks = one_step(SchedulerSide(BS), parked)
    assert (dict_walks, set_walks) == (0, 0), "a step walked the parked requests or the index"
    assert lines == baseline[0], f"{lines} lines with {parked} parked, {baseline[0]} with 1"


def test_sync_loads_are_not_parked_and_their_pins_end_at_the_next_step():
    side = SchedulerSide(BS, placement=Placement(16), sync_loads=True)
    p = prompt(30, 4 * BS + 1)
    hashes = block_hashes(p, BS)
    side.placement.reserve(hashes)
    side.placement.commit(hashes)
    side.committed.update(hashes)
    assert side.matched_tokens("r", p, 0) == (4 * BS, False)  # False: load it in this step
    side.after_alloc("r", [10, 11, 12, 13, 14], 4 * BS)
    assert "r" not in side.parked
    meta = side.build([("r", [10, 11, 12, 13, 14], True, 4 * BS + 1)])
    assert [plan.req_id for plan in meta.loads] == ["r"] and side._pins == {"r": hashes}
    side.build([])  # the load's step has run on every worker by the time this one is built
    assert side._pins == {}


def test_a_failed_sync_load_fails_the_groups_planned_past_it():
    """The next step may be scheduled before the failing step's output arrives: a save group
    of blocks after the failed one was computed from wrong KV and must never be committed."""
    side = SchedulerSide(BS, sync_loads=True)
    p = prompt(31, 8 * BS + 1)
    hashes = block_hashes(p, BS)
    side.committed.update(hashes[:4])
    side.matched_tokens("r", p, 0)
    side.after_alloc("r", list(range(9)), 4 * BS)
    meta = side.build([("r", list(range(9)), True, 6 * BS)])  # blocks 4, 5 computed: saved
    [group] = meta.saves
    assert group.hashes == hashes[4:6]
    side.on_worker_report({}, {}, missing=[hashes[1]], loaded=[])  # block 1 failed its check
    side.on_worker_report({group.group: 1}, {}, missing=[], loaded=[])  # the save itself ended
    assert not set(hashes[4:6]) & side.committed
    assert hashes[1] not in side.committed and hashes[0] in side.committed


def test_a_hit_never_joins_blocks_that_different_requests_computed():
    """In bfloat16 two computations of one block differ in low bits, and a block's KV is
    computed on top of the blocks before it; a hit that joined a block one request saved to
    the blocks after it that another request computed on its own would serve KV no single run
    of the engine holds (docs/measurements.md, tables F4, F5: answers no prefill split
    gives). Two ways it could: the store evicting a chain's head before its tail, then a
    request that computed the head again saving it under the old tail; and two requests
    computing the same head at once, the later one saving its tail under the earlier's head."""
    side = placed_side(10)
    p = prompt(30, 5 * BS + 1)
    hashes = block_hashes(p, BS)
    saved_by: dict[str, str] = {}
    saved_by.update(dict.fromkeys(saved(side, "A", p, list(range(6))), "A"))  # P0..P4
    saved_by.update(dict.fromkeys(saved(side, "B", prompt(31, 5 * BS + 1),
                                        list(range(10, 16))), "B"))  # fills the store
    assert side.matched_tokens("D", p, 2 * BS) == (3 * BS, True)  # vLLM holds P0, P1
    side.after_alloc("D", list(range(20, 26)), 3 * BS)  # loads P2..P4 (and keeps P0, P1)
    side.build([])
    side.on_worker_report({}, {}, (), {"D"})
    saved_by.update(dict.fromkeys(saved(side, "F", prompt(32, 2 * BS + 1), [40, 41, 42]),
                                  "F"))  # a third prompt: B's tail goes
    assert side.matched_tokens("E", p, 0) == (5 * BS, True)
    assert {saved_by[h] for h in hashes[:5]} == {"A"}

    # two requests of one family computing its head at once: the head is the first's
    side = placed_side()
    head = prompt(40, 2 * BS)
    first, second = head + prompt(41, 2 * BS + 1), head + prompt(42, 2 * BS + 1)
    for req, tokens in (("R1", first), ("R2", second)):
        side.track(req, tokens)
        assert side.matched_tokens(req, tokens, 0) == (0, False)  # both miss
    (save1,) = side.build([("R1", list(range(5)), True, len(first))]).saves
    side.on_worker_report({save1.group: 1}, {}, (), ())  # R1's head and tail are stored
    assert side.build([("R2", list(range(10, 15)), True, len(second))]).saves == []
    assert side.matched_tokens("R3", second, 0) == (2 * BS, True)  # the head only

    # a request that loaded the head, or holds it locally, saves its tail on it
    for req, local in (("R4", 0), ("R5", 2 * BS)):
        third = head + prompt(43 + local, 2 * BS + 1)
        assert side.matched_tokens(req, third, local)[0] == 2 * BS - local
        if local == 0:
            side.after_alloc(req, list(range(20, 25)), 2 * BS)
            side.build([])
            side.on_worker_report({}, {}, (), {req})
        (save,) = side.build([(req, list(range(20, 25)), True, len(third))]).saves
        assert save.hashes == block_hashes(third, BS)[2:4]


def test_a_tail_whose_head_failed_or_was_evicted_meanwhile_is_never_stored():
    # chunked prefill: the first chunk's save fails after the second chunk's ended
    side = placed_side()
    p = prompt(50, 4 * BS + 1)
    side.track("R", p)
    side.matched_tokens("R", p, 0)
    (first,) = side.build([("R", list(range(5)), True, 2 * BS)]).saves
    (second,) = side.build([("R", [], False, len(p))]).saves
    side.on_worker_report({second.group: 1}, {}, (), ())
    side.on_worker_report({}, {first.group: 1}, (), ())
    assert not side.committed
    # the first chunk stored, then evicted before the second is planned: nothing on nothing
    side = placed_side(4)
    side.track("R", p)
    side.matched_tokens("R", p, 0)
    (first,) = side.build([("R", list(range(5)), True, 2 * BS)]).saves
    side.on_worker_report({first.group: 1}, {}, (), ())
    saved(side, "O", prompt(51, 2 * BS + 1), [20, 21, 22])
    saved(side, "O2", prompt(52, 2 * BS + 1), [30, 31, 32])  # R's head goes
    assert side.build([("R", [], False, len(p))]).saves == []
    # a tail saved on a head another request is still saving, whose save then fails
    side = placed_side()
    head = prompt(53, 2 * BS)
    a, b = head + prompt(54, 2 * BS + 1), head + prompt(55, 2 * BS + 1)
    side.track("R1", a)
    side.matched_tokens("R1", a, 0)
    (s1,) = side.build([("R1", list(range(5)), True, len(a))]).saves
    side.track("R2", b)
    side.matched_tokens("R2", b, 2 * BS)  # vLLM holds the head locally
    (s2,) = side.build([("R2", [0, 1, 10, 11, 12], True, len(b))]).saves
    side.on_worker_report({s2.group: 1}, {}, (), ())
    side.on_worker_report({}, {s1.group: 1}, (), ())
    assert not side.committed


def test_a_request_resumed_after_preemption_saves_on_what_it_computed_anew():
    """Preempted with its own save in flight and resumed cold, a request computes its head
    again: its tail is not saved on the copy its earlier computation stored."""
    side = placed_side()
    p = prompt(56, 4 * BS + 1)
    side.track("R", p)
    side.matched_tokens("R", p, 0)
    (old,) = side.build([("R", list(range(5)), True, 2 * BS)]).saves
    side.preempted("R")
    side.build([])
    assert side.matched_tokens("R", p, 0) == (0, False)  # its head is not stored yet
    side.on_worker_report({old.group: 1}, {}, (), ())
    assert side.build([("R", list(range(40, 45)), True, len(p))]).saves == []


def test_a_missing_block_takes_every_block_stored_on_it_with_it():
    side = placed_side(40)
    head = prompt(57, 3 * BS)
    x, y = head + prompt(58, 2 * BS + 1), head + prompt(59, 2 * BS + 1)
    hx = block_hashes(x, BS)
    saved(side, "X", x, list(range(6)))
    side.finished("X")  # a finished request's blocks too
    side.track("Y", y)
    side.matched_tokens("Y", y, 0)
    side.after_alloc("Y", list(range(6)), 3 * BS)
    side.build([])
    side.on_worker_report({}, {}, [hx[1]], {"Y"})  # Y's load found block 1 corrupt
    assert [h in side.committed for h in hx[:5]] == [True, False, False, False, False]
    # a request that loaded the dropped blocks does not save its tail on them
    p = prompt(60, 6 * BS + 1)
    hp = block_hashes(p, BS)
    side = placed_side(40)
    saved(side, "A", p, list(range(7)), computed=3 * BS)
    side.finished("A")
    for req in ("S", "R"):
        side.track(req, p)
        side.matched_tokens(req, p, 0)
        side.after_alloc(req, list(range(7)), 3 * BS)
    side.build([])
    side.on_worker_report({}, {}, (), {"S"})
    side.on_worker_report({}, {}, [hp[1]], {"R"})
    assert [save.hashes for save in side.build([("S", list(range(7)), True, len(p))]).saves] \
        == []
    assert [h in side.committed for h in hp[:3]] == [True, False, False]


@pytest.mark.parametrize("seed", range(10))
def test_random_traffic_never_leaves_a_stored_block_without_its_stored_parent(seed):
    """Families of prompts sharing heads, local hits, loads, chunked prefills, saves that
    fail, reports late and out of order, preemptions, corrupt blocks, requests that end:
    after every step a prompt's stored blocks are a prefix of it."""
    import random

    rng = random.Random(seed)
    side = placed_side(24)
    placement = side.placement
    heads = [[rng.randrange(1, 999) for _ in range(3 * BS)] for _ in range(3)]
    prompts = [h + [rng.randrange(1, 999) for _ in range(rng.randrange(1, 5) * BS + 1)]
               for h in heads for _ in range(3)]
    chains = [block_hashes(p, BS) for p in prompts]
    open_saves: list[str] = []
    loads: list[str] = []
    for step in range(400):
        req = f"r{step}"
        tokens = prompts[rng.randrange(len(prompts))]
        usable = (len(tokens) - 1) // BS
        local = rng.randrange(0, usable + 1) * BS if rng.random() < 0.3 else 0
        new, _ = side.matched_tokens(req, tokens, local)
        if new > 0 and rng.random() < 0.8:
            side.after_alloc(req, list(range(100)), new)
            loads.append(req)
        cuts = [2 * BS, len(tokens)] if rng.random() < 0.5 else [len(tokens)]
        for k, cut in enumerate(cuts):
            open_saves += [s.group for s in side.build([(req, list(range(100)), k == 0,
                                                         cut)]).saves]
        if rng.random() < 0.1:
            side.preempted(req)
        rng.shuffle(open_saves)
        while open_saves and rng.random() < 0.6:
            group = open_saves.pop()
            ok = rng.random() < 0.9
            side.on_worker_report({group: 1} if ok else {}, {} if ok else {group: 1}, (), ())
        if loads and rng.random() < 0.7:
            stored = sorted(side.committed)
            bad = [rng.choice(stored)] if stored and rng.random() < 0.2 else []
            side.on_worker_report({}, {}, bad, {loads.pop(rng.randrange(len(loads)))})
        if rng.random() < 0.5:
            side.finished(req)
        assert all(placement.is_committed(h) for h in side.committed), f"step {step}"
        for chain in chains:  # every stored block is one of these prompts'

            held = [h in side.committed for h in chain]
            assert held == sorted(held, reverse=True), f"step {step}"


def test_a_later_chunk_is_stored_only_on_the_copy_of_its_head_it_was_computed_on():
    """A request's second chunk is planned while its first is still being saved; the first
    fails (or is evicted once stored) and another request saves its own copy of the head: the
    second chunk, computed on the first request's head, is not stored on that copy."""
    p = prompt(61, 4 * BS + 1)
    hashes = block_hashes(p, BS)
    for failed in (True, False):
        side = placed_side(20 if failed else 5)
        side.track("R", p)
        side.matched_tokens("R", p, 0)
        (first,) = side.build([("R", list(range(5)), True, 2 * BS)]).saves
        (second,) = side.build([("R", [], False, len(p))]).saves
        if failed:
            side.on_worker_report({}, {first.group: 1}, (), ())
            saved(side, "S", p, list(range(10, 15)), computed=2 * BS)  # S's head, cold
        else:
            side.on_worker_report({first.group: 1}, {}, (), ())
            saved(side, "O", prompt(62, 2 * BS + 1), [30, 31, 32])
            assert hashes[1] not in side.committed  # another prompt's save evicted it
            side.track("S", p)
            assert side.matched_tokens("S", p, 0) == (BS, True)
            side.after_alloc("S", list(range(10, 15)), BS)
            side.build([])
            side.on_worker_report({}, {}, (), {"S"})
            (s,) = side.build([("S", list(range(10, 15)), True, 2 * BS)]).saves
            side.on_worker_report({s.group: 1}, {}, (), ())  # S's block 1 on R's block 0
        assert hashes[1] in side.committed
        side.on_worker_report({second.group: 1}, {}, (), ())
        assert hashes[2] not in side.committed and hashes[3] not in side.committed


def test_a_local_hit_counts_as_the_computation_that_wrote_its_gpu_block():
    """vLLM's own cache may hold another computation of a block than the store: two
    requests computed a family's head at once, the store kept the first's, vLLM's cache gives
    a later request the second's GPU blocks. Its tail is saved only on the copy it holds."""
    side = placed_side()
    head = prompt(63, 2 * BS)
    first, second = head + prompt(64, 2 * BS + 1), head + prompt(65, 2 * BS + 1)
    for req, tokens in (("R1", first), ("R2", second)):
        side.track(req, tokens)
        side.matched_tokens(req, tokens, 0)
    meta = side.build([("R1", [0, 1, 2, 3, 4], True, len(first)),
                       ("R2", [10, 11, 12, 13, 14], True, len(second))])
    assert [s.req_id for s in meta.saves] == ["R1"]  # R2 computed the head too: not on R1's
    side.on_worker_report({meta.saves[0].group: 1}, {}, (), ())
    for req, local_blocks, saves in (("R3", [10, 11], 0), ("R4", [0, 1], 1)):
        tokens = head + prompt(66 + saves, 2 * BS + 1)
        side.track(req, tokens)
        side.matched_tokens(req, tokens, 2 * BS)  # vLLM holds the head: R2's, then R1's
        planned = side.build([(req, [*local_blocks, 30, 31, 32], True, len(tokens))]).saves
        assert len(planned) == saves, req


def test_a_load_asks_for_the_copy_that_was_saved_and_another_computation_is_another_copy():
    """Slab tags name a block's copy (the block and the computation its KV is): a load asks
    for the copy its save stored, and the same block saved again by another computation has
    other tags, so planes a save missed that still hold the old copy never pass."""
    side = placed_side(4)
    p = prompt(70, 2 * BS + 1)
    side.track("A", p)
    (save,) = side.build([("A", [0, 1, 2], True, len(p))]).saves
    side.on_worker_report({save.group: 1}, {}, (), ())
    side.track("B", p)
    side.matched_tokens("B", p, 0)
    side.after_alloc("B", [5, 6, 7], 2 * BS)
    (load,) = side.build([]).loads
    assert load.copies == save.copies and len(set(save.copies)) == 2
    side.on_worker_report({}, {}, [load.hashes[0]], {"B"})  # corrupt: both blocks go
    side.finished("A")
    side.finished("B")
    side.track("C", p)
    (again,) = side.build([("C", [10, 11, 12], True, len(p))]).saves
    assert again.hashes == save.hashes and not set(again.copies) & set(save.copies)
