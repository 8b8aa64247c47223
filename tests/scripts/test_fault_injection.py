"""The real-engine check's fault injector (``scripts/fault_injection.py``) on the CPU slab.

It wraps the runtime's private transfer methods, so a change to how the runtime calls them
could break every load; the engine would then recompute everything and still give the right
tokens. Here its loads must run through the real runtime, and its faults must be caught.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from streamcheck.connector.slab import HostSlab, key_tag
from streamcheck.connector.worker_side import ConnectorRuntime
from tests.connector.test_runtime_cpu import LAYERS, block_nbytes, drain, kv_caches

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault_injection.py"
spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
fault_injection = importlib.util.module_from_spec(spec)
sys.modules.setdefault("fault_injection", fault_injection)
spec.loader.exec_module(fault_injection)


@pytest.fixture(params=[True, False], ids=["held saves", "worker saves"])
def runtime(request):
    """Saves held to ``seal`` and issued by the caller (the vLLM connector's way), or each a
    job for the worker thread."""
    rt = ConnectorRuntime(HostSlab(LAYERS, 16, block_nbytes(), pin_memory=False),
                          kv_caches(1), "cpu", hold_saves=request.param)
    yield rt
    rt.shutdown()


def saved(rt, ids: list[int], slots: list[int]) -> list[int]:
    """Save ``ids`` of every layer into ``slots``; returns their tags."""
    tags = [key_tag(f"b{i}") for i in ids]
    rt.save_planes("g", list(range(LAYERS)), ids, slots, tags)
    rt.seal(["g"])
    drain(rt)
    return tags


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_every_nth_load_is_corrupted_caught_and_counted_and_the_others_load(runtime, mode):
    counts = fault_injection.inject_faults(runtime, every=2, slow_s=0.0)
    ids, slots = [3, 7], [4, 5]
    tags = saved(runtime, ids, slots)
    failed = []
    for n in range(4):
        if mode == "async":
            runtime.load_planes(f"r{n}", list(range(LAYERS)), [20, 21], slots, tags)
            done = runtime.poll(wait_loads_s=5)
            assert done.loads_done == {f"r{n}"}
            failed.append(sorted(done.failed_load_blocks))
        else:
            load = runtime.load_planes_now(list(range(LAYERS)), [20, 21], slots, tags)
            failed.append(runtime.settle_now(load))
        if failed[-1]:
            runtime.slab.data[0, slots[0], 7] ^= 0x20  # mend it, as a later save would
    assert counts == [4, 2]  # 4 loads seen, the 2nd and 4th corrupted
    assert failed == [[], [20], [], [20]]  # caught by the sums; the clean loads loaded
    snap = runtime.metrics.snapshot()
    assert snap["load_bytes"] > 0 and snap["failed_loads"] == 2


def test_a_slow_store_keeps_saves_in_flight_without_holding_up_the_caller(runtime):
    """A slowed save is still stored, and stays in flight for at least the delay; a held
    save (issued by the engine thread) is not slept in: ``seal`` returns with it running."""
    import time

    counts = fault_injection.inject_faults(runtime, every=0, slow_s=0.2)
    start = time.perf_counter()
    runtime.save_planes("g", list(range(LAYERS)), [1, 2], [0, 1], [5, 7])
    runtime.seal(["g"])
    if runtime.hold_saves:
        assert runtime.poll().saves_ok == set()  # in flight: the store is slow
        assert runtime.pending() == 1
    saves, _, _ = drain(runtime)
    assert saves == {"g"} and time.perf_counter() - start >= 0.2
    assert runtime.metrics.snapshot()["save_bytes"] > 0 and counts == [0, 0]
