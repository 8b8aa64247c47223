"""The connector runtime on a real CUDA device: word-view gather/scatter, pieces, events, failures.

Skipped where no CUDA device is visible; ``scripts/gpu_connector_check.py`` and
``scripts/bench_connector.py`` cover the same path at TP=2 and at full size.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

import streamcheck
from streamcheck.connector.backends import HostBackend
from streamcheck.connector.worker_side import ConnectorRuntime, PollResult

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def settle(rt: ConnectorRuntime, timeout: float = 30.0) -> PollResult:
    news = PollResult()
    deadline = time.time() + timeout
    while time.time() < deadline:
        news.merge(rt.poll())
        if rt.pending() == 0:
            news.merge(rt.poll())
            return news
        time.sleep(0.002)
    raise TimeoutError("connector work did not finish")


@pytest.mark.parametrize(("dtype", "block_shape", "word"), [
    (torch.bfloat16, (2, 16, 8), torch.int64),  # 512-byte blocks: moved as 8-byte words
    (torch.uint8, (3, 5), torch.uint8),  # 15-byte blocks: no wider word divides them
])
def test_round_trip_on_cuda_is_bit_exact_and_a_missing_block_is_never_written(
        dtype, block_shape, word):
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    auditor = streamcheck.install("assert")  # the runtime's own launches are audited too
    g = torch.Generator(device=device).manual_seed(0)
    kv = [torch.randint(0, 100, (64, *block_shape), generator=g, device=device).to(dtype)
          for _ in range(2)]
    nbytes = kv[0][0].numel() * kv[0].element_size()
    backend = HostBackend(capacity_blocks=64, block_nbytes=nbytes, pin_memory=True)
    rt = ConnectorRuntime(backend, kv, device, staging_blocks=5)  # 2 chunks; pieces of 1-2 rows
    assert rt._blocks(0).dtype == word
    ids = [3, 17, 9, 40, 1, 22, 7]
    compute = torch.cuda.Stream(device)
    with torch.cuda.stream(compute):  # the engine writes and hands off on its compute stream
        for layer in range(2):
            kv[layer][ids] += 1
            rt.save_layer("g", layer, ids, [f"k{b}L{layer}" for b in ids])
    rt.seal(["g"])
    assert settle(rt).saves_ok == {"g"}
    compute.synchronize()
    expected = [layer_kv[ids].clone() for layer_kv in kv]

    backend.delete(["k9L1"])  # gone before the load: that block must be recomputed
    targets = [50, 51, 52, 53, 54, 55, 56]
    for layer_kv in kv:
        layer_kv[targets] = 0
    torch.cuda.synchronize()
    rt.start_load("l", {layer: (targets, [f"k{b}L{layer}" for b in ids]) for layer in range(2)})
    news = settle(rt)
    assert news.loads_done == {"l"} and news.failed_load_blocks == {52}
    with torch.cuda.stream(compute):
        rt.wait_for_loads()  # the forward orders itself after the loads
        loaded = [layer_kv[targets].clone() for layer_kv in kv]
    compute.synchronize()
    assert torch.equal(loaded[0], expected[0])
    keep = [i for i, t in enumerate(targets) if t != 52]
    assert torch.equal(loaded[1][keep], expected[1][keep])
    assert torch.count_nonzero(loaded[1][2]) == 0  # block 52 of layer 1 untouched
    assert "k9L1" in rt.last_error
    assert auditor.findings() == [] and rt.metrics.hazards_stopped == 0
    rt.shutdown()


def test_assert_mode_fails_an_unordered_save_instead_of_storing_torn_kv(monkeypatch):
    """A connector that forgets to order its copy after the forward's writes (the wait on the
    handoff event removed) must not store the blocks: in assert mode the gather is stopped
    before it runs, the save group is reported failed (vLLM recomputes), nothing is stored."""
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    streamcheck.install("assert")
    kv = [torch.ones(16, 2, 16, 8, device=device, dtype=torch.bfloat16)]
    nbytes = kv[0][0].numel() * kv[0].element_size()
    backend = HostBackend(capacity_blocks=16, block_nbytes=nbytes, pin_memory=True)
    rt = ConnectorRuntime(backend, kv, device)
    compute = torch.cuda.Stream(device)
    monkeypatch.setattr(torch.cuda.Stream, "wait_event", lambda self, event: None)
    with torch.cuda.stream(compute):
        kv[0][[1, 2]] *= 3
        rt.save_layer("g", 0, [1, 2], ["a", "b"])
    rt.seal(["g"])
    news = settle(rt)
    monkeypatch.undo()
    assert news.saves_failed == {"g"} and news.saves_ok == set()
    assert backend.lookup(["a", "b"]) == [False, False]
    assert rt.metrics.hazards_stopped == 1 and "unsynced-handoff" in rt.last_error
    rt.shutdown()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.uint8])
def test_slab_round_trip_on_cuda_checks_every_block_on_the_device(dtype):
    """The host slab path: device gather, one copy per run of slots straight into pinned
    memory, sums computed and checked on the device; a block flipped in host memory after its
    save is reported failed; the runtime's own launches raise no finding in assert mode."""
    from streamcheck.connector.slab import HostSlab

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    auditor = streamcheck.install("assert")
    g = torch.Generator(device=device).manual_seed(1)
    kv = [torch.randint(0, 100, (64, 2, 16, 8), generator=g, device=device).to(dtype)
          for _ in range(2)]
    nbytes = kv[0][0].numel() * kv[0].element_size()
    slab = HostSlab(2, 32, nbytes, pin_memory=True)
    rt = ConnectorRuntime(slab, kv, device)
    ids, slots = [3, 17, 9, 40, 1, 22, 7], [4, 5, 6, 10, 11, 30, 0]
    compute = torch.cuda.Stream(device)
    with torch.cuda.stream(compute):
        for layer in range(2):
            kv[layer][ids] += 1
            rt.save_layer("g", layer, ids, [f"k{b}.L{layer}" for b in ids], slots=slots)
    rt.seal(["g"])
    assert settle(rt).saves_ok == {"g"}
    compute.synchronize()
    expected = [layer_kv[ids].clone() for layer_kv in kv]
    slab.data[1, 10, 3] ^= 0x01  # block 40 of layer 1 damaged in host memory
    targets = [50, 51, 52, 53, 54, 55, 56]
    rt.start_load("l", {layer: (targets, [f"k{b}.L{layer}" for b in ids]) for layer in range(2)},
                  slots=slots)
    news = settle(rt)
    assert news.loads_done == {"l"} and news.failed_load_blocks == {53}
    with torch.cuda.stream(compute):
        rt.wait_for_loads()
        loaded = [layer_kv[targets].clone() for layer_kv in kv]
    compute.synchronize()
    assert torch.equal(loaded[0], expected[0])
    keep = [i for i, t in enumerate(targets) if t != 53]
    assert torch.equal(loaded[1][keep], expected[1][keep])
    assert auditor.findings() == [] and rt.metrics.hazards_stopped == 0
    rt.shutdown()


def _audited_two_planes() -> tuple[torch.device, Any, list[torch.Tensor], int]:
    """cuda:0 made current, ``assert`` installed, two bf16 KV planes of 32 blocks, and a
    block's bytes."""
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    auditor = streamcheck.install("assert")
    kv = [torch.randn(32, 2, 16, 8, device=device).to(torch.bfloat16) for _ in range(2)]
    return device, auditor, kv, kv[0][0].numel() * kv[0].element_size()


def _runtime(store: str, kv: list[torch.Tensor], device: torch.device, nbytes: int,
             slots: list[int]) -> tuple[ConnectorRuntime, dict[str, Any]]:
    """A runtime on the pinned host ``slab`` (8 slots; loads are told ``slots``) or the
    ``host`` store (16 blocks; loads find their blocks by key), and what its loads take."""
    from streamcheck.connector.slab import HostSlab

    if store == "slab":
        return ConnectorRuntime(HostSlab(2, 8, nbytes, pin_memory=True), kv, device), {
            "slots": slots}
    return ConnectorRuntime(HostBackend(capacity_blocks=16, block_nbytes=nbytes,
                                        pin_memory=True), kv, device), {}


@pytest.mark.parametrize("store", ["host", "slab"])
def test_a_load_into_blocks_the_forward_still_reads_waits_for_it_or_is_stopped(
        store, monkeypatch):
    """vllm#47282 on the connector's own path: blocks loaded for one request are read by the
    forward (declared at ``wait_for_loads``); freed and handed to the next request, a load
    into them must wait for those reads. The runtime orders every load after the engine's
    stream as it was when the load was queued, so a second load is clean; with that event
    taken too early (before the reads), assert mode stops the scatter as write-after-read
    and the blocks are reported failed (recomputed) instead of overwritten under the read."""
    device, auditor, kv, nbytes = _audited_two_planes()
    ids, slots, targets = [1, 2, 3], [0, 1, 2], [20, 21, 22]
    layers = {layer: (targets, [f"k{b}.L{layer}" for b in ids]) for layer in range(2)}
    rt, load_slots = _runtime(store, kv, device, nbytes, slots)
    compute = torch.cuda.Stream(device)
    with torch.cuda.stream(compute):
        for layer in range(2):
            rt.save_layer("g", layer, ids, [f"k{b}.L{layer}" for b in ids],
                          slots=slots if store == "slab" else None)
    rt.seal(["g"])
    assert settle(rt).saves_ok == {"g"}

    def load_and_read(req: str) -> PollResult:
        with torch.cuda.stream(compute):
            rt.start_load(req, layers, **load_slots)
        news = settle(rt)
        with torch.cuda.stream(compute):
            rt.wait_for_loads()
            for layer in range(2):
                kv[layer][targets].float().sum()  # the forward reads the loaded blocks
        return news

    assert load_and_read("a").failed_load_blocks == set()
    assert load_and_read("b").failed_load_blocks == set()  # ordered after "a"'s reads
    assert auditor.findings() == [] and rt.metrics.hazards_stopped == 0

    early = torch.cuda.Event()
    early.record(compute)  # before the reads below: orders nothing after them
    with torch.cuda.stream(compute):
        for layer in range(2):
            kv[layer][targets].float().sum()
            streamcheck.handoff(streamcheck.blocks(kv[layer], targets), access="read")
    monkeypatch.setattr(rt, "_engine_mark", lambda: early)
    with torch.cuda.stream(compute):
        rt.start_load("c", layers, **load_slots)
    news = settle(rt)
    assert news.failed_load_blocks == set(targets)
    assert rt.metrics.hazards_stopped >= 1 and "write-after-read" in rt.last_error
    assert {f.rule_id for f in auditor.findings()} == {"write-after-read"}
    rt.shutdown()


@pytest.mark.parametrize("store", ["host", "slab"])
def test_one_wait_before_the_forward_orders_and_declares_the_reads_of_every_plane(store):
    """The adapter calls ``wait_for_loads`` once, before the forward (vLLM's
    ``start_load_kv``). The forward's stream waits for the completed loads of every plane (one
    event for a slab load's planes, one a plane for the host store's), and the reads of all
    are declared: a
    later load into those blocks ordered only before them is stopped (``write-after-read``),
    one ordered after them is clean."""
    from streamcheck.wrappers.user_launch import tensor_key

    device, auditor, kv, nbytes = _audited_two_planes()
    ids, slots, targets = [1, 2, 3], [0, 1, 2], [20, 21, 22]
    rt, placed = _runtime(store, kv, device, nbytes, slots)
    layers = {plane: (targets, [f"k{b}.L{plane}" for b in ids]) for plane in range(2)}
    compute = torch.cuda.Stream(device)
    with torch.cuda.stream(compute):
        for plane in range(2):
            rt.save_layer("g", plane, ids, [f"k{b}.L{plane}" for b in ids],
                          slots=placed.get("slots"))
    rt.seal(["g"])
    assert settle(rt).saves_ok == {"g"}
    expected = [kv[plane][ids].clone() for plane in range(2)]

    def load(req: str) -> PollResult:
        with torch.cuda.stream(compute):
            rt.start_load(req, layers, **placed)
        return settle(rt)

    def reads_on_compute(plane: int) -> int:
        target = auditor.write_target(tensor_key(kv[plane]), frozenset(targets))
        return sum(r.stream.stream_id == compute.stream_id for r in target.reads)

    assert load("a").failed_load_blocks == set()
    with torch.cuda.stream(compute):
        rt.wait_for_loads()
        assert all(torch.equal(kv[plane][targets], expected[plane]) for plane in range(2))
    assert not rt._loads_done  # both planes' loads waited for by the one call
    assert reads_on_compute(0) == 1 and reads_on_compute(1) == 1  # and both planes' reads
    with torch.cuda.stream(compute):
        rt.start_load("b", layers, **placed)  # ordered after the reads: clean
    assert settle(rt).failed_load_blocks == set() and auditor.findings() == []
    early = torch.cuda.Event()
    early.record(compute)  # after "b" landed, before the reads below
    with torch.cuda.stream(compute):
        rt.wait_for_loads()
        kv[1][targets].float().sum()
    rt._engine_mark = lambda: early  # a load ordered before those reads only
    with torch.cuda.stream(compute):
        rt.start_load("c", layers, **placed)
    assert settle(rt).failed_load_blocks == set(targets)
    assert {f.rule_id for f in auditor.findings()} == {"write-after-read"}
    rt.shutdown()


def test_a_sync_load_on_the_engine_stream_needs_no_event_and_is_bit_exact():
    """``load_planes_now`` from the engine thread: copies, checks and scatters on the engine's
    current stream, so the forward queued next reads the blocks in order (no event, no worker);
    assert mode finds nothing, and a corrupt block is named after the forward was queued."""
    from streamcheck.connector.slab import HostSlab, key_tag

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    auditor = streamcheck.install("assert")
    kv = [torch.randn(32, 2, 16, 8, device=device).to(torch.bfloat16) for _ in range(2)]
    nbytes = kv[0][0].numel() * kv[0].element_size()
    slab = HostSlab(2, 8, nbytes, pin_memory=True)
    rt = ConnectorRuntime(slab, kv, device)
    ids, slots, targets = [1, 2, 3], [0, 1, 2], [20, 21, 22]
    tags = [key_tag(h) for h in ("a", "b", "c")]
    compute = torch.cuda.Stream(device)
    with torch.cuda.stream(compute):
        rt.save_planes("g", [0, 1], ids, slots, tags)
    rt.seal(["g"])
    assert settle(rt).saves_ok == {"g"}
    expected = [layer[ids].clone() for layer in kv]
    with torch.cuda.stream(compute):
        load = rt.load_planes_now([0, 1], targets, slots, tags)
        got = [layer[targets].clone() for layer in kv]  # "the forward", queued right behind
    assert rt.settle_now(load) == []
    compute.synchronize()
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    slab.data[1, 2, 7] ^= 0x04  # "c" of plane 1 damaged in host memory
    with torch.cuda.stream(compute):
        load = rt.load_planes_now([0, 1], targets, slots, tags)
    assert rt.settle_now(load) == [22]
    assert auditor.findings() == [] and rt.metrics.hazards_stopped == 0
    rt.shutdown()


def test_an_async_slab_load_issued_by_the_engine_thread_is_ordered_and_checked():
    """``load_planes`` (the default, asynchronous load): issued by the engine thread on the
    runtime's load stream after the engine's stream, retired by ``poll``; the forward orders
    itself after it (``wait_for_loads``, before the forward), once it completed: a forward queued
    while it is in flight does not wait for it. Bit-exact, a corrupt block named, and nothing
    for assert mode to find."""
    from streamcheck.connector.slab import HostSlab, key_tag

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    auditor = streamcheck.install("assert")
    kv = [torch.randn(32, 2, 16, 8, device=device).to(torch.bfloat16) for _ in range(2)]
    nbytes = kv[0][0].numel() * kv[0].element_size()
    slab = HostSlab(2, 8, nbytes, pin_memory=True)
    rt = ConnectorRuntime(slab, kv, device)
    ids, slots, targets = [1, 2, 3], [0, 1, 2], [20, 21, 22]
    tags = [key_tag(h) for h in ("a", "b", "c")]
    compute = torch.cuda.Stream(device)
    with torch.cuda.stream(compute):
        rt.save_planes("g", [0, 1], ids, slots, tags)
    rt.seal(["g"])
    assert settle(rt).saves_ok == {"g"}
    expected = [layer[ids].clone() for layer in kv]
    with torch.cuda.stream(compute):
        torch.cuda._sleep(50_000_000)  # the engine's stream is busy when the load is asked for
        rt.load_planes("r", [0, 1], targets, slots, tags)
    # in flight: a forward of other requests queued now must not wait for it
    assert not rt._loads_done
    news = settle(rt)
    # complete: offered to the next forward, every plane with the load's one event
    assert [planes for _event, planes, _ids in rt._loads_done] == [(0, 1)]
    assert news.loads_done == {"r"} and news.failed_load_blocks == set()
    snap = rt.metrics.snapshot()  # where the load's time went
    assert snap["slab_loads"] == 1 and snap["polls"] >= 1
    assert snap["load_device_ms"] > 0 and snap["load_retire_ms"] > 0
    assert snap["load_ready_wait_ms"] > 0  # the engine's stream was busy (the sleep above)
    assert snap["load_polls_waiting"] >= 1  # ``settle`` polled while the sleep ran
    with torch.cuda.stream(compute):
        rt.wait_for_loads()
        got = [layer[targets].clone() for layer in kv]
    compute.synchronize()
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    slab.data[0, 1, 3] ^= 0x02  # "b" of plane 0 damaged in host memory
    with torch.cuda.stream(compute):
        rt.load_planes("r2", [0, 1], targets, slots, tags)
    news = settle(rt)
    assert news.loads_done == {"r2"} and news.failed_load_blocks == {21}
    assert auditor.findings() == [] and rt.metrics.hazards_stopped == 0
    rt.shutdown()


def test_slab_transfers_across_runs_of_planes_and_word_layouts_are_bit_exact_and_checked():
    """A layer count that spans several runs of planes (CHECK_PLANES each), one plane whose
    alignment allows only 4-byte words, slots in two runs: saved layer by layer with saves
    held until ``seal`` (the vLLM adapter's way: one merged job waiting for every layer's
    event), loaded back bit-exact by both load paths, and a block damaged in a later run's
    plane, or in the odd plane, is the one named failed."""
    from streamcheck.connector.slab import HostSlab, key_tag
    from streamcheck.connector.worker_side import CHECK_PLANES

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    auditor = streamcheck.install("assert")
    nbytes, blocks = 256, 24
    kv = [torch.randint(0, 255, (blocks, nbytes), dtype=torch.uint8, device=device)
          for _ in range(2 * CHECK_PLANES + 3)]
    backing = torch.randint(0, 255, (blocks * nbytes + 4,), dtype=torch.uint8, device=device)
    kv.insert(5, backing[4:].view(blocks, nbytes))  # 4-byte aligned: int32 words
    planes = list(range(len(kv)))
    slab = HostSlab(len(kv), 16, nbytes, pin_memory=True)
    rt = ConnectorRuntime(slab, kv, device, hold_saves=True)
    assert [b.dtype for b in (rt._blocks(4), rt._blocks(5))] == [torch.int64, torch.int32]
    ids, slots, targets = [1, 2, 3, 4], [0, 1, 7, 8], [20, 21, 22, 23]
    tags = [key_tag(h) for h in ("a", "b", "c", "d")]
    compute = torch.cuda.Stream(device)
    with torch.cuda.stream(compute):
        for layer in range(0, len(planes), 2):  # K and V of a layer, as the adapter saves
            torch.cuda._sleep(1_000_000)  # the layer's forward, still running when queued
            rt.save_planes("g", planes[layer:layer + 2], ids, slots, tags)
    rt.seal(["g"])
    assert settle(rt).saves_ok == {"g"}
    expected = [plane[ids].clone() for plane in kv]
    with torch.cuda.stream(compute):
        rt.load_planes("r", planes, targets, slots, tags)
    assert settle(rt).failed_load_blocks == set()
    with torch.cuda.stream(compute):
        rt.wait_for_loads()
        got = [plane[targets].clone() for plane in kv]
    compute.synchronize()
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    slab.data[len(kv) - 2, 7, 9] ^= 0x10  # "c" damaged in a plane of the last run
    slab.data[5, 1, 200] ^= 0x01  # "b" damaged in the int32 plane
    with torch.cuda.stream(compute):
        rt.load_planes("r2", planes, targets, slots, tags)
    assert settle(rt).failed_load_blocks == {21, 22}
    with torch.cuda.stream(compute):
        load = rt.load_planes_now(planes, targets, slots, tags)
    assert sorted(rt.settle_now(load)) == [21, 22]
    assert auditor.findings() == [] and rt.metrics.hazards_stopped == 0
    rt.shutdown()
