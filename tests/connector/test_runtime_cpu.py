"""The connector runtime on CPU tensors: round trips, failures, lookups, shutdown."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from streamcheck.connector.backends import DiskBackend, HostBackend
from streamcheck.connector.keys import block_hashes, layer_key
from streamcheck.connector.worker_side import ConnectorRuntime, _GroupState, _Job, word_view

LAYERS, BLOCKS, BLOCK_SHAPE = 3, 32, (2, 16, 8)  # (k/v, tokens, head dim): 1 KiB of fp32


def kv_caches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BLOCKS, *BLOCK_SHAPE, generator=g) for _ in range(LAYERS)]


def block_nbytes() -> int:
    return int(torch.tensor(BLOCK_SHAPE).prod()) * 4


def wait_until(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return False


def drain(rt: ConnectorRuntime):
    saves, loads, failed = set(), set(), set()

    def done():
        result = rt.poll()
        saves.update(result.saves_ok)
        loads.update(result.loads_done)
        failed.update(result.failed_load_blocks)
        return rt.pending() == 0

    assert wait_until(done)
    return saves, loads, failed


class GatedHost(HostBackend):
    """A host backend whose saves wait until the test opens ``gate`` (a slow or stuck store)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def save(self, key, block):
        self.gate.wait(5)
        return super().save(key, block)


@pytest.fixture(params=["host", "disk"])
def backend(request, tmp_path):
    if request.param == "host":
        b = HostBackend(capacity_blocks=256, block_nbytes=block_nbytes(), pin_memory=False)
    else:
        b = DiskBackend(tmp_path / "kv", block_nbytes=block_nbytes())
    yield b
    b.close()


def test_save_then_load_into_other_blocks_is_bit_exact(backend):
    src = kv_caches(1)
    rt = ConnectorRuntime(backend, src, "cpu", staging_blocks=4)  # forces several chunks
    tokens = list(range(16 * 10))
    hashes = block_hashes(tokens, 16)
    ids = [3, 7, 1, 30, 12, 5, 9, 0, 2, 4]
    for layer in range(LAYERS):
        rt.save_layer("req-a", layer, ids, [layer_key(h, layer) for h in hashes])
    rt.seal(["req-a"])
    saves, _, _ = drain(rt)
    assert saves == {"req-a"}
    assert rt.lookup([layer_key(h, 0) for h in hashes]) == len(hashes)

    dst = [torch.full_like(t, float("nan")) for t in src]
    rt2 = ConnectorRuntime(backend, dst, "cpu")
    targets = [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]
    rt2.start_load("req-b", {layer: (targets, [layer_key(h, layer) for h in hashes])
                             for layer in range(LAYERS)})
    _, loads, failed = drain(rt2)
    assert loads == {"req-b"} and failed == set()
    for layer in range(LAYERS):
        assert torch.equal(dst[layer][targets], src[layer][ids])
    rt.shutdown(drain=True)
    rt2.shutdown(drain=True)


def test_partial_hit_counts_only_the_leading_present_blocks():
    b = HostBackend(capacity_blocks=64, block_nbytes=block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(b, kv_caches(), "cpu")
    hashes = block_hashes(list(range(16 * 6)), 16)
    rt.save_layer("r", 0, [0, 1, 2], [layer_key(h, 0) for h in hashes[:3]])
    rt.seal(["r"])
    drain(rt)
    keys = [layer_key(h, 0) for h in hashes]
    assert rt.lookup(keys) == 3
    assert rt.lookup(keys) == 3  # repeatable
    rt.shutdown()


def test_failed_load_reports_failed_blocks_and_never_writes_them():
    b = HostBackend(capacity_blocks=64, block_nbytes=block_nbytes(), pin_memory=False)
    dst = [torch.full((BLOCKS, *BLOCK_SHAPE), 7.0) for _ in range(LAYERS)]
    rt = ConnectorRuntime(b, dst, "cpu")
    rt.start_load("r", {0: ([4, 5], ["missing.L0", "also-missing.L0"])})
    _, loads, failed = drain(rt)
    assert loads == {"r"} and failed == {4, 5}
    assert torch.all(dst[0][[4, 5]] == 7.0)  # untouched: vLLM recomputes them
    assert rt.metrics.snapshot()["failed_loads"] == 1
    rt.shutdown()


def test_a_load_that_fails_part_way_drains_its_streams_before_it_is_reported():
    """Writes a failed load queued before it failed must be done before vLLM hears of the
    failure (and recomputes those blocks on its own stream); a failed save need not wait."""
    rt = ConnectorRuntime(HostBackend(capacity_blocks=64, block_nbytes=block_nbytes(),
                                      pin_memory=False), kv_caches(), "cpu")
    order = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def synchronize(self):
            order.append(("drained", self.name, set(rt._done.loads_done)))

    rt._load_stream, rt._stream, rt._scatter_stream = (Stream(n) for n in (
        "load", "worker", "scatter"))
    job = _Job("load", "req-1", 0, [3, 4], ["k3", "k4"])
    with rt._lock:
        rt._loads["req-1"] = _GroupState(pending=1, queued=1, sealed=True)

    def fails_part_way():
        raise RuntimeError("the second plane's buffer could not be allocated")

    assert rt._run_job(job, fails_part_way) is None
    assert order == [("drained", name, set()) for name in ("load", "worker", "scatter")]
    assert "req-1" in rt._done.loads_done and {3, 4} <= rt._done.failed_load_blocks
    order.clear()
    save = _Job("save", "req-1@1", 0, [3], ["k3"])
    with rt._lock:
        rt._saves["req-1@1"] = _GroupState(pending=1, queued=1, sealed=True)
    rt._run_job(save, fails_part_way)
    assert order == []
    rt.shutdown(drain=False)


def test_engine_calls_do_not_block_on_a_slow_backend():
    b = GatedHost(capacity_blocks=64, block_nbytes=block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(b, kv_caches(), "cpu")
    start = time.perf_counter()
    for layer in range(LAYERS):
        rt.save_layer("r", layer, [0, 1], [f"k{layer}a", f"k{layer}b"])
    assert time.perf_counter() - start < 0.5 and rt.pending() == LAYERS
    rt.seal(["r"])
    b.gate.set()
    saves, _, _ = drain(rt)
    assert saves == {"r"}
    rt.shutdown()


def test_failed_save_is_reported_and_never_visible():
    class Refusing(HostBackend):
        def save(self, key, block):
            if key.endswith("b.L0"):
                raise OSError("store full")
            return super().save(key, block)

    b = Refusing(capacity_blocks=64, block_nbytes=block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(b, kv_caches(), "cpu")
    rt.save_layer("grp", 0, [0, 1], ["a.L0", "b.L0"])
    rt.seal(["grp"])
    assert wait_until(lambda: rt.pending() == 0)
    result = rt.poll()
    assert result.saves_failed == {"grp"} and result.saves_ok == set()
    assert b.lookup(["b.L0"]) == [False]
    rt.shutdown()


def test_shutdown_without_drain_cancels_queued_work():
    b = GatedHost(capacity_blocks=64, block_nbytes=block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(b, kv_caches(), "cpu")
    for i in range(5):
        rt.save_layer(f"r{i}", 0, [i], [f"key{i}"])
    b.gate.set()
    rt.shutdown(drain=False)
    assert not rt._thread.is_alive()


def test_layout_errors_are_clear():
    b = HostBackend(capacity_blocks=4, block_nbytes=64, pin_memory=False)
    with pytest.raises(ValueError, match="backend blocks are 64 bytes"):
        ConnectorRuntime(b, kv_caches(), "cpu")
    with pytest.raises(ValueError, match="no KV cache layers"):
        ConnectorRuntime(b, [], "cpu")


def test_flush_waits_for_the_reads_not_for_the_store():
    b = GatedHost(capacity_blocks=64, block_nbytes=block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(b, kv_caches(), "cpu")
    rt.save_layer("r", 0, [0, 1], ["fa", "fb"])
    start = time.perf_counter()
    rt.flush(timeout=4)  # the blocks are in staging while the store is still blocked
    assert time.perf_counter() - start < 3 and rt.pending() == 1
    b.gate.set()
    assert wait_until(lambda: rt.pending() == 0)
    rt.shutdown()


def test_a_save_group_is_reported_only_once_sealed_and_every_layer_ended():
    b = HostBackend(capacity_blocks=64, block_nbytes=block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(b, kv_caches(), "cpu")
    rt.save_layer("g", 0, [0, 1], ["g.a.L0", "g.b.L0"])
    assert wait_until(lambda: rt.pending() == 0)
    assert rt.poll().saves_ok == set()  # layer 0 ended, but more layers may still join
    rt.save_layer("g", 1, [0, 1], ["g.a.L1", "g.b.L1"])
    rt.seal(["g"])
    saves, _, _ = drain(rt)
    assert saves == {"g"} and b.lookup(["g.a.L1", "g.b.L1"]) == [True, True]
    rt.shutdown()


def test_a_layer_queued_after_the_seal_is_refused():
    b = GatedHost(capacity_blocks=64, block_nbytes=block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(b, kv_caches(), "cpu")
    rt.save_layer("g", 0, [0], ["g.L0"])
    rt.seal(["g"])
    with pytest.raises(ValueError, match="already sealed"):
        rt.save_layer("g", 1, [0], ["g.L1"])  # it would be missing from a group reported ok
    b.gate.set()
    saves, _, _ = drain(rt)
    assert saves == {"g"}
    rt.shutdown()


def test_a_group_sealed_with_nothing_queued_is_reported_failed():
    b = HostBackend(capacity_blocks=64, block_nbytes=block_nbytes(), pin_memory=False)
    rt = ConnectorRuntime(b, kv_caches(), "cpu")
    rt.seal(["empty"])
    result = rt.poll()
    assert result.saves_failed == {"empty"} and result.saves_ok == set()
    rt.shutdown()


def test_a_backend_call_that_raises_fails_only_its_own_block():
    class Flaky(HostBackend):
        def load(self, key, into):
            if key == "k2":
                raise OSError("store hiccup")
            return super().load(key, into)

    b = Flaky(capacity_blocks=64, block_nbytes=block_nbytes(), pin_memory=False)
    src = kv_caches(3)
    rt = ConnectorRuntime(b, src, "cpu")
    rt.save_layer("s", 0, [0, 1, 2, 3], ["k0", "k1", "k2", "k3"])
    rt.seal(["s"])
    drain(rt)
    dst = [torch.zeros_like(t) for t in src]
    rt2 = ConnectorRuntime(b, dst, "cpu")
    rt2.start_load("l", {0: ([10, 11, 12, 13], ["k0", "k1", "k2", "k3"])})
    _, loads, failed = drain(rt2)
    assert loads == {"l"} and failed == {12}
    assert torch.equal(dst[0][[10, 11, 13]], src[0][[0, 1, 3]])
    assert torch.all(dst[0][12] == 0)
    assert "k2: OSError: store hiccup" in rt2.last_error and rt2.metrics.failed_loads == 1
    rt.shutdown()
    rt2.shutdown()


@pytest.mark.parametrize(("row_bytes", "offset", "dtype"), [
    (64, 0, torch.int64), (12, 0, torch.int32), (64, 4, torch.int32), (6, 0, torch.int16),
    (5, 0, torch.uint8)])
def test_word_view_picks_the_widest_word_rows_and_alignment_allow(row_bytes, offset, dtype):
    raw = torch.arange(4 * row_bytes + offset, dtype=torch.int64).to(torch.uint8)
    rows = raw[offset:].view(4, row_bytes)
    words = word_view(rows)
    assert words.dtype == dtype
    assert torch.equal(words.view(torch.uint8), rows)  # the same bytes, nothing copied
    assert words.data_ptr() == rows.data_ptr()


def test_invalid_sizes_are_refused():
    b = HostBackend(capacity_blocks=4, block_nbytes=block_nbytes(), pin_memory=False)
    with pytest.raises(ValueError, match="staging_blocks"):
        ConnectorRuntime(b, kv_caches(), "cpu", staging_blocks=0)
