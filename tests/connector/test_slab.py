"""The host slab on CPU tensors: sums, runs, and the runtime's slab path end to end."""

from __future__ import annotations

import pytest
import torch

from streamcheck.connector.slab import HostSlab, block_sums, runs
from streamcheck.connector.timeline import Timeline
from streamcheck.connector.worker_side import ConnectorRuntime
from tests.connector.test_runtime_cpu import BLOCKS, LAYERS, block_nbytes, drain, kv_caches


def test_runs_split_slots_into_consecutive_stretches():
    assert runs([4, 5, 6, 9, 10, 2]) == [(0, 4, 3), (3, 9, 2), (5, 2, 1)]
    assert runs([]) == [] and runs([7]) == [(0, 7, 1)]


def test_block_sums_see_any_changed_or_moved_word():
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(-2**62, 2**62, (4, 64), generator=g, dtype=torch.int64)
    base = block_sums(rows)
    changed = rows.clone()
    changed[2, 17] += 1
    swapped = rows.clone()
    swapped[1, [3, 4]] = swapped[1, [4, 3]]
    assert (block_sums(changed) != base).tolist() == [False, False, True, False]
    assert (block_sums(swapped) != base).tolist() == [False, True, False, False]
    assert torch.equal(block_sums(rows.view(torch.int32)), block_sums(rows.view(torch.int32)))


def keys(hashes: list[str], layer: int) -> list[str]:
    return [f"{h}.L{layer}" for h in hashes]


class Pending:
    """A fake completion event: still running for its first ``n`` queries (None: until
    waited for with ``synchronize``)."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n

    def query(self) -> bool:
        if self.n is None:
            return False
        self.n -= 1
        return self.n < 0

    def synchronize(self) -> None:
        self.n = -1


@pytest.fixture
def slab_runtime():
    slab = HostSlab(LAYERS, 16, block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(slab, kv_caches(1), "cpu")
    yield rt, slab
    rt.shutdown()


def saved_then_cleared(rt, hashes: list[str], ids: list[int], slots: list[int]) -> list:
    """Save ``ids`` of every layer into ``slots`` as group "g", wait for it, zero the KV
    cache; returns the KV as it was (what a load must bring back)."""
    src = [kv.clone() for kv in rt.kv_caches]
    for layer in range(LAYERS):
        rt.save_layer("g", layer, ids, keys(hashes, layer), slots=slots)
    rt.seal(["g"])
    drain(rt)
    for kv in rt.kv_caches:
        kv.zero_()
    return src


def test_round_trip_through_the_slab_is_bit_exact(slab_runtime):
    rt, _ = slab_runtime
    src = [kv.clone() for kv in rt.kv_caches]
    hashes, ids, slots = ["h0", "h1", "h2"], [3, 7, 8], [5, 6, 11]
    for layer in range(LAYERS):
        rt.save_layer("g", layer, ids, keys(hashes, layer), slots=slots)
    rt.seal(["g"])
    saves, _, _ = drain(rt)
    assert saves == {"g"}
    for kv in rt.kv_caches:
        kv.zero_()
    rt.start_load("r", {layer: ([0, 1, 2], keys(hashes, layer)) for layer in range(LAYERS)},
                  slots=slots)
    _, loads, failed = drain(rt)
    assert loads == {"r"} and failed == set()
    for layer in range(LAYERS):
        assert torch.equal(rt.kv_caches[layer][[0, 1, 2]], src[layer][ids])
    assert rt.metrics.slab_load.polled_loads == 0  # the worker retired them, not the engine


def test_a_corrupt_or_foreign_slot_fails_its_block_only(slab_runtime):
    rt, slab = slab_runtime
    hashes, slots = ["a", "b", "c"], [0, 1, 2]
    for layer in range(LAYERS):
        rt.save_layer("g", layer, [0, 1, 2], keys(hashes, layer), slots=slots)
    rt.seal(["g"])
    drain(rt)
    slab.data[1, 1, 5] ^= 0x10  # a flipped bit in "b" of layer 1
    loads = {layer: ([10, 11, 12], keys(hashes, layer)) for layer in range(LAYERS)}
    loads[2] = ([10, 11, 12], keys(["a", "b", "x"], 2))  # slot 2 does not hold "x"
    rt.start_load("r", loads, slots=slots)
    _, done, failed = drain(rt)
    assert done == {"r"} and failed == {11, 12}


def test_a_slab_needs_a_slot_for_every_block(slab_runtime):
    rt, _ = slab_runtime
    with pytest.raises(ValueError, match="one slot per block"):
        rt.save_layer("g", 0, [1, 2], ["a.L0", "b.L0"])
    with pytest.raises(ValueError, match="slots must lie in"):
        rt.save_layer("g", 0, [1], ["a.L0"], slots=[16])
    assert BLOCKS > 12


def test_a_sync_load_runs_on_the_calling_thread_and_names_its_failed_blocks(slab_runtime):
    """``load_planes_now``: the engine thread loads a hit itself, ahead of the forward; the
    blocks land at once (on a CPU device), and ``settle_now`` names a corrupt block and one
    whose slot holds another block, counted as one failed load."""
    from streamcheck.connector.slab import key_tag

    rt, slab = slab_runtime
    hashes, ids, slots = ["a", "b", "c"], [3, 7, 8], [4, 5, 6]
    src = saved_then_cleared(rt, hashes, ids, slots)
    tags = [key_tag(f"{h}.L0") for h in hashes]  # save_layer tags each plane by its key
    load = rt.load_planes_now([0], [20, 21, 22], slots, tags)
    assert rt.settle_now(load) == []
    assert torch.equal(rt.kv_caches[0][[20, 21, 22]], src[0][ids])
    slab.data[0, 5, 3] ^= 0x01  # "b" damaged in host memory
    load = rt.load_planes_now([0], [23, 24, 25], slots, [tags[0], tags[1], key_tag("x.L0")])
    assert rt.settle_now(load) == [25, 24]  # the foreign slot (never copied), then "b"
    assert rt.metrics.failed_loads == 1 and rt.pending() == 0
    assert torch.count_nonzero(rt.kv_caches[0][25]) == 0  # never written


def test_a_sync_load_that_raises_fails_its_blocks_instead_of_the_engine_step(slab_runtime,
                                                                           monkeypatch):
    """Whatever goes wrong while a sync load is issued (out of device memory, say) must not
    leave ``start_load_kv``: every block of the load is reported failed (vLLM recomputes)."""
    rt, _ = slab_runtime

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(rt, "_issue_slab_load", broken)
    load = rt.load_planes_now([0], [20, 21], [0, 1], [1, 2])
    assert rt.settle_now(load) == [20, 21]
    assert "out of memory" in rt.last_error


def test_an_async_slab_load_is_issued_by_the_caller_and_retired_by_poll(slab_runtime,
                                                                       monkeypatch):
    """``load_planes`` issues its copies on the calling (engine) thread and ``poll`` retires
    them, so a load never waits for the worker thread, which may be busy with saves (or, in
    an engine, waiting for the GIL). Here the worker is held inside a save the whole time."""
    import threading

    from streamcheck.connector.slab import key_tag

    rt, _ = slab_runtime
    hashes, ids, slots = ["a", "b"], [3, 7], [4, 5]
    src = saved_then_cleared(rt, hashes, ids, slots)
    held, entered = threading.Event(), threading.Event()
    issue_save = rt._slab_save
    issuers: list[str] = []
    issue_load = rt._launch_slab_load

    def slow_save(job):
        entered.set()
        held.wait(10)
        return issue_save(job)

    def recorded_load(*args):
        issuers.append(threading.current_thread().name)
        return issue_load(*args)

    monkeypatch.setattr(rt, "_slab_save", slow_save)
    monkeypatch.setattr(rt, "_launch_slab_load", recorded_load)
    rt.save_layer("busy", 0, [9], ["z.L0"], slots=[9])
    assert entered.wait(10)  # the worker thread is now held in that save
    tags = [key_tag(f"{h}.L0") for h in hashes]
    rt.load_planes("r", [0], [20, 21], slots, tags)
    assert issuers == [threading.current_thread().name]
    polls = rt.metrics.polls
    done = rt.poll()
    assert done.loads_done == {"r"} and not done.failed_load_blocks
    assert torch.equal(rt.kv_caches[0][[20, 21]], src[0][ids])
    snap = rt.metrics.snapshot()  # one slab load timed; no device on a CPU, so no device time
    assert snap["slab_loads"] == 1 and snap["polls"] == polls + 1
    assert snap["load_device_ms"] == snap["load_ready_wait_ms"] == 0
    held.set()
    rt.seal(["busy"])
    drain(rt)


def test_the_polls_that_wait_for_an_issued_load_are_counted(slab_runtime, monkeypatch):
    """A load's wait is the device's or the engine's polling: the metrics say which, with
    the time from the issue to the first poll and the polls that found the load running."""
    from streamcheck.connector.slab import key_tag

    rt, _ = slab_runtime
    hashes, ids, slots = ["a", "b"], [3, 7], [4, 5]
    saved_then_cleared(rt, hashes, ids, slots)
    issue_load = rt._launch_slab_load

    def still_running(*args):
        load = issue_load(*args)
        load.done = Pending(2)
        return load

    monkeypatch.setattr(rt, "_launch_slab_load", still_running)
    rt.timeline = Timeline(100)
    rt.load_planes("r", [0], [20, 21], slots, [key_tag(f"{h}.L0") for h in hashes])
    assert rt.poll().loads_done == set()
    assert rt.poll().loads_done == set()
    assert rt.poll().loads_done == {"r"}
    snap = rt.metrics.snapshot()
    assert snap["load_polls_waiting"] == 2 and snap["load_first_poll_ms"] >= 0
    assert rt.metrics.slab_load.polled_loads == 1
    assert snap["load_retire_ms"] >= snap["load_first_poll_ms"]
    assert [(what, detail) for _, _, what, detail in rt.timeline.records()] == [
        ("load.issue", "r"), ("load.issued", "r"), ("poll", "1"), ("poll", "1"), ("poll", "1"),
        ("retire", "load r")]
    drain(rt)


def test_a_poll_told_to_wait_for_loads_retires_each_issued_load_or_gives_up_in_time(
        slab_runtime, monkeypatch):
    """In an engine step that computes nothing the adapter polls with ``wait_loads_s``: a load
    the engine thread issued is waited for and reported in that step, not a step later; one
    still running at the deadline stays issued for a later poll."""
    import time

    from streamcheck.connector.slab import key_tag

    rt, _ = slab_runtime
    hashes, ids, slots = ["a", "b"], [3, 7], [4, 5]
    src = saved_then_cleared(rt, hashes, ids, slots)
    issue_load = rt._launch_slab_load
    queries = iter([5, 3, None])

    def running(*args):
        load = issue_load(*args)
        load.done = Pending(next(queries))
        return load

    monkeypatch.setattr(rt, "_launch_slab_load", running)
    tags = [key_tag(f"{h}.L0") for h in hashes]
    rt.load_planes("r1", [0], [20, 21], slots, tags)
    rt.load_planes("r2", [0], [22, 23], slots, tags)
    assert rt.poll().loads_done == set()  # a plain poll never waits
    assert rt.poll(wait_loads_s=10).loads_done == {"r1", "r2"}
    assert torch.equal(rt.kv_caches[0][[22, 23]], src[0][ids])
    assert rt.poll(wait_loads_s=10).loads_done == set()  # nothing issued: returns at once

    rt.load_planes("r3", [0], [24, 25], slots, tags)  # never completes by itself
    start = time.perf_counter()
    assert rt.poll(wait_loads_s=0.02).loads_done == set()
    assert time.perf_counter() - start >= 0.02  # it waited, then gave up
    rt._issued[0].done.n = 0  # the device finished it
    assert rt.poll().loads_done == {"r3"}
    drain(rt)


def test_a_slab_load_after_shutdown_fails_at_once(slab_runtime):
    """Nothing retires a load issued after ``shutdown``: it is reported failed instead of
    being left on the device unretired."""
    rt, _ = slab_runtime
    rt.shutdown()
    rt.load_planes("late", [0], [1, 2], [3, 4], [5, 6])
    done = rt.poll()
    assert done.loads_done == {"late"} and done.failed_load_blocks == {1, 2}
    assert rt.pending() == 0 and "shut down" in rt.last_error


def test_slab_transfers_check_planes_in_runs_of_one_word_layout():
    """A slab transfer sums and moves runs of planes that share a word layout (at most
    CHECK_PLANES each), in order: a plane whose alignment allows only narrower words starts
    a run of its own, and every plane lands in exactly one run at its own position."""
    from streamcheck.connector.worker_side import CHECK_PLANES

    nbytes = 64
    backing = torch.zeros(13 * 4 * nbytes + 4, dtype=torch.uint8)
    planes = [backing[i * 4 * nbytes:(i + 1) * 4 * nbytes].view(4, nbytes) for i in range(10)]
    odd = backing[10 * 4 * nbytes + 4:11 * 4 * nbytes + 4].view(4, nbytes)  # 4-byte aligned
    planes += [odd] + [torch.zeros(4, nbytes, dtype=torch.uint8) for _ in range(2)]
    rt = ConnectorRuntime(HostSlab(len(planes), 4, nbytes, pin_memory=False), planes, "cpu")
    try:
        groups = rt._check_groups(list(range(len(planes))))
        assert [len(g) for g in groups] == [CHECK_PLANES, 10 - CHECK_PLANES, 1, 2]
        assert [i for g in groups for i, _, _ in g] == list(range(len(planes)))
        assert [{blocks.dtype for _, _, blocks in g} for g in groups] == [
            {torch.int64}, {torch.int64}, {torch.int32}, {torch.int64}]
        assert rt._blocks(3) is rt._blocks(3)  # views made once per KV tensor
    finally:
        rt.shutdown()


def test_a_steps_held_saves_of_one_request_are_issued_as_one_job(monkeypatch):
    """With saves held until ``seal`` (the vLLM adapter's way), each layer's save of one group
    into the same blocks and slots becomes one job for all planes: its Python runs once per
    request and step, not once per layer. A group saving elsewhere, or another group, stays a
    job of its own; every group is reported once, bit-exact."""
    from streamcheck.connector.slab import key_tag

    slab = HostSlab(LAYERS, 16, block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(slab, kv_caches(3), "cpu", hold_saves=True)
    jobs: list[tuple[str, list[int]]] = []
    issue_save = rt._slab_save

    def recorded(job):
        jobs.append((job.group, list(job.planes)))
        return issue_save(job)

    monkeypatch.setattr(rt, "_slab_save", recorded)
    try:
        src = [kv.clone() for kv in rt.kv_caches]
        tags = [key_tag(h) for h in ("a", "b")]
        for layer in range(LAYERS):
            rt.save_planes("g", [layer], [3, 7], [4, 5], tags)
            rt.save_planes("h", [layer], [9], [8], [key_tag("c")])
        rt.save_planes("g", [0], [11], [6], [key_tag("d")])  # the same group, other blocks
        assert rt._unread_saves == 2 * LAYERS + 1
        rt.seal(["g", "h"])
        saves, _, _ = drain(rt)
        assert saves == {"g", "h"} and rt._unread_saves == 0
        assert sorted(jobs) == [("g", [0]), ("g", list(range(LAYERS))),
                                ("h", list(range(LAYERS)))]
        for kv in rt.kv_caches:
            kv.zero_()
        rt.load_planes("r", list(range(LAYERS)), [20, 21], [4, 5], tags)
        assert rt.poll().loads_done == {"r"}
        assert all(torch.equal(kv[[20, 21]], s[[3, 7]]) for kv, s in
                   zip(rt.kv_caches, src, strict=True))
    finally:
        rt.shutdown()


def test_held_slab_saves_are_issued_by_the_sealing_thread_and_retired_by_its_polls(
        monkeypatch):
    """Held slab saves never go through the worker thread (on a GPU its Python, handing the
    GIL back and forth with the engine's next step, slowed that step by 70 %): ``seal``
    issues them on the calling thread and ``poll`` retires them once their copies completed;
    ``flush`` (before vLLM reuses preempted blocks) waits for them itself."""
    import threading

    from streamcheck.connector.slab import key_tag

    slab = HostSlab(LAYERS, 16, block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(slab, kv_caches(1), "cpu", hold_saves=True)
    issuers: list[str] = []
    issue_save = rt._slab_save

    def running(job):
        issuers.append(threading.current_thread().name)
        issued = issue_save(job)
        issued.done = Pending(3)  # running for the next three queries
        return issued

    monkeypatch.setattr(rt, "_slab_save", running)
    try:
        tags = [key_tag(h) for h in ("a", "b")]
        for layer in range(LAYERS):
            rt.save_planes("g", [layer], [3, 7], [4, 5], tags)
        rt.seal(["g"])
        assert issuers == [threading.current_thread().name]
        assert rt.poll().saves_ok == set()  # its copies are still running
        assert rt._unread_saves == 1 and rt.pending() == 1
        rt.flush()  # waits for the copies out of the KV cache: the blocks may be reused now
        assert rt._unread_saves == 0
        assert rt.poll().saves_ok == {"g"} and rt.pending() == 0

        def stuck(job):
            issued = issue_save(job)
            issued.done = Pending(None)  # a copy that never ends by itself
            return issued

        monkeypatch.setattr(rt, "_slab_save", stuck)
        rt.save_planes("s", [0], [9], [8], [key_tag("c")])
        rt.seal(["s"])
        with pytest.raises(TimeoutError):
            rt.flush(timeout=0.05)  # says so in time, as for the worker's saves
        rt._issued_saves[0].done.n = 0  # the device finished it after all
        assert rt.poll().saves_ok == {"s"}

        monkeypatch.setattr(rt, "_slab_save", running)
        rt.save_planes("h", [0], [9], [8], [key_tag("c")])
        rt.seal(["h"])
        rt.shutdown()  # retires what it issued: nothing is left pending
        assert rt.pending() == 0 and rt.poll().saves_ok == {"h"}
    finally:
        rt.shutdown()


def test_saves_of_a_group_failed_before_they_are_queued_are_never_issued(monkeypatch):
    """A failed sync load spoils its step's saves: under speculative decoding vLLM asks for
    the step's transfer results (which fail the groups) before ``wait_for_save`` queues the
    saves. Queued after the failure, they are counted and dropped, never copied into the slab;
    the group is reported failed once sealed."""
    from streamcheck.connector.slab import key_tag

    slab = HostSlab(LAYERS, 16, block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(slab, kv_caches(3), "cpu", hold_saves=True)
    issued: list[str] = []
    issue_save = rt._slab_save
    monkeypatch.setattr(rt, "_slab_save", lambda job: issued.append(job.group) or
                        issue_save(job))
    try:
        tags = [key_tag(h) for h in ("a", "b")]
        rt.fail_groups(["g"])
        rt.save_planes("g", list(range(LAYERS)), [3, 7], [4, 5], tags)
        rt.save_planes("h", list(range(LAYERS)), [9], [8], [key_tag("c")])
        rt.seal(["g", "h"])
        result = rt.poll()
        assert issued == ["h"] and result.saves_failed == {"g"}
        assert drain(rt)[0] | result.saves_ok == {"h"}
        assert rt.metrics.failed_saves == 1 and rt._unread_saves == 0
    finally:
        rt.shutdown()


def test_the_completed_loads_kept_for_the_next_forwards_wait_are_bounded():
    """A runtime whose caller never calls ``wait_for_loads`` (vLLM calls it every step) keeps
    the latest :data:`MAX_LOAD_WAITS_A_PLANE` a plane of its KV cache, not all of them."""
    from streamcheck.connector.worker_side import MAX_LOAD_WAITS_A_PLANE

    slab = HostSlab(LAYERS, 16, block_nbytes(), pin_memory=False)
    caches = kv_caches(3)
    rt = ConnectorRuntime(slab, caches, "cpu")
    kept = MAX_LOAD_WAITS_A_PLANE * len(caches)
    try:
        for n in range(kept + 5):
            rt._offer_load_wait([0, 1], f"event{n}", [n])
        assert [ids for _event, _planes, ids in rt._loads_done] == [
            [n] for n in range(5, kept + 5)]
    finally:
        rt.shutdown()
