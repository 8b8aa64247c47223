"""Request lifecycles through vLLM's real scheduler and the streamcheck connector (CPU).

Each scenario returns plain facts (JSON); the pytest side asserts on them. Run in a vLLM env:
``python vllm_lifecycle_scenarios.py host disk redis`` prints the facts as one JSON object.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vllm_lifecycle_harness import BLOCK, Engine

Facts = dict[str, Any]


def tokens(seed: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 999, (n,), generator=g).tolist()


def finish(eng: Engine, facts: Facts) -> Facts:
    """Common end checks: no stale KV read, the store holds only true KV, clean shutdown."""
    facts["stale_reads"] = eng.stale_reads
    facts["idle_marks"] = sorted(set(eng.idle_marks))
    facts["excused_reads"] = eng.excused_reads
    facts["store_audit"] = eng.audit_store()
    facts["blocks_held_after"] = eng.block_usage() - eng.idle_blocks
    facts["side_requests_left"] = sorted(eng.side._requests)
    facts["side_parked_left"] = sorted(eng.side.parked)
    facts["shutdown"] = eng.shutdown()
    return facts


def lifecycles(extra: dict[str, Any], layer_calls: bool = True) -> Facts:
    """Miss, hit (async load, parked, bit-exact) and partial hit."""
    eng, facts = Engine(extra, layer_calls=layer_calls), {}
    prompt = tokens(1, 4 * BLOCK + 8)
    eng.add("A", prompt, max_tokens=3)
    eng.step()
    eng.snapshot("A", 4)
    eng.drain()
    facts["miss_first_compute"] = eng.first_compute["A"]
    facts["miss_committed_blocks"] = eng.committed(prompt)
    facts["miss_keys_in_store"] = sum(eng.backend.lookup(
        [f"{h}.L{p}" for h in eng.block_hashes(prompt) for p in range(4)]))

    hit = prompt[:4 * BLOCK] + tokens(2, 10)
    eng.backend.load_gate.clear()  # the load's copies are still running after this step
    eng.add("B", hit, max_tokens=3)
    eng.step()
    facts["hit_status_after_lookup"] = eng.status("B")
    facts["hit_parked_in_side"] = "B" in eng.side.parked
    eng.backend.load_gate.set()
    facts["hit_steps_parked"] = 1 + eng.run_until(lambda: "B" in eng.first_compute)
    facts["hit_first_compute"] = eng.first_compute["B"]
    facts["hit_bit_exact_to_writer"] = eng.same_as_snapshot("B", "A", 4)
    eng.drain()

    partial = prompt[:2 * BLOCK + 8] + tokens(3, 30)
    eng.add("C", partial, max_tokens=2)
    eng.drain()
    facts["partial_first_compute"] = eng.first_compute["C"]
    facts["partial_prompt_len"] = len(partial)
    facts["all_gone"] = [eng.status(r) for r in "ABC"]
    return finish(eng, facts)


def full_graphs(extra: dict[str, Any]) -> Facts:
    """:func:`lifecycles` with every forward replayed from a full CUDA graph: vLLM calls no
    ``wait_for_layer_load`` or ``save_kv_layer``, and the saves and loads must not need them."""
    return lifecycles(extra, layer_calls=False)


def local_plus_external(extra: dict[str, Any]) -> Facts:
    """vLLM's own prefix cache serves the first block, the connector the next three."""
    eng, facts = Engine(extra, prefix_caching=True), {}
    prompt = tokens(5, 4 * BLOCK + 8)
    eng.add("A", prompt, max_tokens=2)
    eng.drain()
    facts["reset_local_cache"] = eng.scheduler.reset_prefix_cache()
    eng.add("D", prompt[:BLOCK] + tokens(6, 5), max_tokens=2)  # puts block 0 back locally
    eng.drain()
    eng.backend.load_gate.clear()  # the load's copies are still running after this step
    eng.add("B", prompt[:4 * BLOCK] + tokens(7, 6), max_tokens=2)
    eng.step()
    facts["status_after_lookup"] = eng.status("B")
    facts["load_starts_at_block"] = eng.side.parked["B"].first
    eng.backend.load_gate.set()
    eng.run_until(lambda: "B" in eng.first_compute)
    facts["first_compute"] = eng.first_compute["B"]
    eng.drain()
    return finish(eng, facts)


def async_timing(extra: dict[str, Any]) -> Facts:
    """A parked request costs the other requests nothing: they keep stepping."""
    eng, facts = Engine(extra), {}
    prompt = tokens(10, 4 * BLOCK + 8)
    eng.add("W", prompt, max_tokens=2)
    eng.drain()
    eng.add("D", tokens(11, 20), max_tokens=30)
    eng.step()
    eng.backend.load_gate.clear()
    eng.add("R", prompt[:4 * BLOCK] + tokens(12, 5), max_tokens=2)
    statuses, progress = [], []
    for _ in range(6):
        eng.step()
        statuses.append(eng.status("R"))
        progress.append(eng.scheduler.requests["D"].num_computed_tokens)
    facts["parked_statuses"] = sorted(set(statuses))
    facts["parked_in_side"] = "R" in eng.side.parked
    facts["other_progress"] = progress
    eng.backend.load_gate.set()
    eng.run_until(lambda: "R" in eng.first_compute)
    facts["first_compute"] = eng.first_compute["R"]
    eng.drain()
    return finish(eng, facts)


def corrupt(eng: Engine, key: str) -> None:
    """Flip one payload byte of a stored block behind the backend's back."""
    inner = eng.backend.inner
    if inner.name == "host":
        eng.backend.corrupt(key)
    elif inner.name == "disk":
        from streamcheck.connector.backends.disk import SLOT_HEADER_NBYTES

        path, offset = inner.locate(key)
        with path.open("r+b") as f:  # the payload's 100th byte from its end
            f.seek(offset + SLOT_HEADER_NBYTES + inner.block_nbytes - 100)
            byte = f.read(1)[0]
            f.seek(-1, 1)
            f.write(bytes([byte ^ 0x40]))
    else:
        import redis

        client = redis.Redis.from_url(eng.worker.config.url)
        name = inner.final_key(key)
        data = bytearray(client.get(name))
        data[-100] ^= 0x40
        client.set(name, bytes(data))


def drop(eng: Engine, keys: list[str]) -> None:
    """The store drops these blocks. In the host slab a dropped slot is then written by
    another save: a load issued before the drop read which slots hold what at its issue, and
    its copies read the slot's bytes when they run, so the bytes change under it (a drop alone
    leaves them intact, and they are served, rightly)."""
    if eng.backend.inner.name == "host":
        for key in keys:
            eng.backend.corrupt(key)
    eng.backend.delete(keys)


def load_failure(extra: dict[str, Any]) -> Facts:
    """Blocks deleted or corrupted between lookup and load: reported, recomputed, never read."""
    eng, facts = Engine(extra), {}
    prompt = tokens(20, 4 * BLOCK + 8)
    hashes = eng.block_hashes(prompt)
    eng.add("A", prompt, max_tokens=2)
    eng.drain()
    for name, damage, bad_block in (
        ("deleted", lambda: drop(eng, [f"{hashes[2]}.L{p}" for p in range(4)]), 2),
        ("corrupt", lambda: corrupt(eng, f"{hashes[1]}.L2"), 1),
    ):
        req = f"B-{name}"
        eng.backend.load_gate.clear()  # the load is queued, held before it reads the store
        eng.add(req, prompt[:4 * BLOCK] + tokens(21, 6), max_tokens=2)
        eng.step()
        facts[f"{name}_status_after_lookup"] = eng.status(req)
        damage()
        # the recompute's own saves wait, so a hit now can only be the failed block left
        # standing (slab saves are issued and retired within a step)
        eng.backend.save_gate.clear()
        eng.backend.load_gate.set()
        eng.run_until(lambda r=req: r in eng.first_compute)
        facts[f"{name}_first_compute"] = eng.first_compute[req]
        facts[f"{name}_expected_computed"] = bad_block * BLOCK
        facts[f"{name}_bad_hash_served_after"] = hashes[bad_block] in eng.side.committed
        eng.backend.save_gate.set()
        eng.drain()
        facts[f"{name}_committed_after_recompute"] = eng.committed(prompt)
    return finish(eng, facts)


def store_failure(extra: dict[str, Any]) -> Facts:
    """A save that fails never becomes a hit; the blocks before it still do."""
    eng, facts = Engine(extra, max_batched=2 * BLOCK), {}  # chunked: one save group a step
    prompt = tokens(30, 4 * BLOCK + 8)
    hashes = eng.block_hashes(prompt)
    eng.backend.fail_save = lambda key: key == f"{hashes[2]}.L3"  # the last layer queued
    eng.add("A", prompt, max_tokens=2)
    eng.drain()
    facts["committed_blocks"] = eng.committed(prompt)
    facts["failed_hashes_served"] = [h in eng.side.committed for h in hashes[2:]]
    eng.backend.fail_save = lambda key: False
    eng.add("B", prompt, max_tokens=2)
    eng.drain()
    facts["next_first_compute"] = eng.first_compute["B"]
    facts["committed_after_resave"] = eng.committed(prompt)
    return finish(eng, facts)


def preemption(extra: dict[str, Any]) -> Facts:
    """vLLM preempts a request whose saves are still queued and gives its blocks to another
    request in the same step: the saves must read them before that forward overwrites them."""
    eng, facts = Engine(extra, num_blocks=6, long_prefill=2 * BLOCK), {}  # 5 usable blocks
    eng.backend.save_gate.clear()
    eng.add("X", tokens(40, 4 * BLOCK), max_tokens=2)  # prefills 32 tokens a step
    eng.add("Y", tokens(41, 2 * BLOCK + 5), max_tokens=3)  # its two full blocks: saves held
    eng.step()
    release = threading.Timer(0.5, eng.backend.save_gate.set)
    release.start()
    eng.step()  # X needs two more blocks: Y is preempted, X writes into Y's freed blocks
    facts["preempted_in_second_step"] = dict(eng.preemptions)
    release.join()
    eng.drain()
    facts["all_gone"] = [eng.status(r) for r in ("X", "Y")]
    facts["steps"] = eng.steps
    facts["saves_pending_at_flushes"] = eng.workers[0].flushes
    facts["resumed"] = eng.resumed
    return finish(eng, facts)


def abort(extra: dict[str, Any]) -> Facts:
    """Aborts while a save and a load are in flight: blocks stay until the connector reports."""
    from vllm.v1.request import RequestStatus

    eng, facts = Engine(extra), {}
    prompt = tokens(50, 4 * BLOCK + 8)
    eng.add("A", prompt, max_tokens=2)
    eng.drain()
    eng.backend.save_gate.clear()
    eng.backend.load_gate.clear()
    eng.add("S", tokens(51, 4 * BLOCK + 8), max_tokens=5)
    eng.add("L", prompt[:4 * BLOCK] + tokens(52, 5), max_tokens=3)
    eng.step()
    facts["statuses_before_abort"] = [eng.status("S"), eng.status("L")]
    used = eng.block_usage()
    eng.scheduler.finish_requests(["S", "L"], RequestStatus.FINISHED_ABORTED)
    held = []
    for _ in range(3):
        eng.step()
        held.append(eng.block_usage() == used and all(r in eng.scheduler.requests
                                                      for r in ("S", "L")))
    facts["held_while_in_flight"] = held
    eng.backend.save_gate.set()
    eng.backend.load_gate.set()
    facts["steps_to_release"] = eng.drain()
    facts["gone"] = [eng.status("S"), eng.status("L")]
    w = eng.worker
    facts["worker_state_left"] = [len(w._group_req), len(w._req_groups), len(w._finishing),
                                  len(w._load_blocks)]
    return finish(eng, facts)


def shutdown_in_flight(extra: dict[str, Any]) -> Facts:
    """Shutdown with saves still queued: they drain, the runtime thread ends."""
    eng, facts = Engine(extra), {}
    eng.backend.save_delay_s = 0.01
    eng.backend.save_gate.clear()  # still running when the shutdown starts
    eng.add("A", tokens(60, 4 * BLOCK + 8), max_tokens=8)
    eng.step()
    facts["pending_at_shutdown"] = eng.workers[0].runtime.pending()
    threading.Timer(0.05, eng.backend.save_gate.set).start()  # the shutdown waits for them
    facts["shutdown"] = eng.shutdown()
    return facts


def two_workers(extra: dict[str, Any]) -> Facts:
    """Two tensor-parallel workers sharing one store: each keeps its own slice under its own
    keys, and a block is served only once BOTH workers saved it."""
    eng, facts = Engine(extra, workers=2), {}
    prompt = tokens(80, 4 * BLOCK + 8)
    eng.workers[1].backend.save_gate.clear()  # rank 1 lags behind rank 0
    eng.add("A", prompt, max_tokens=2)
    eng.run_until(lambda: eng.workers[0].runtime.pending() == 0 and eng.steps >= 4)
    facts["served_while_one_rank_saving"] = eng.committed(prompt)
    facts["writer_status_while_one_rank_saving"] = eng.status("A")
    eng.workers[1].backend.save_gate.set()
    eng.drain()
    facts["served_after_both"] = eng.committed(prompt)
    eng.add("B", prompt[:4 * BLOCK] + tokens(81, 5), max_tokens=2)
    eng.drain()
    facts["hit_first_compute"] = eng.first_compute["B"]
    return finish(eng, facts)


def capacity_pressure(extra: dict[str, Any]) -> Facts:
    """More distinct KV than the store holds, under vLLM's strict ``kv_load_failure_policy``
    ("fail", 0.24's default): eight requests, half sharing a two-block prefix, each run twice,
    four at a time, with room for a fraction of their blocks. A hit must be a block the store
    still has: no request may end with an error, no load may fail, no KV read may be stale,
    and the second pass must still be served from the store where it has room."""
    capacity = 40  # token blocks; the working set is 8 x ~7 blocks
    eng = Engine(dict(extra, capacity_blocks=capacity), num_blocks=128, max_batched=512,
                 policy="fail")
    shared = tokens(100, 2 * BLOCK)
    prompts = [(shared if i % 2 == 0 else []) + tokens(200 + i, 6 * BLOCK + 5)
               for i in range(8)]
    for rnd in range(2):
        for start in (0, 4):
            for i in range(start, start + 4):
                eng.add(f"p{rnd}-{i}", prompts[i], max_tokens=2)
            eng.drain(timeout_s=60)
    facts: Facts = {
        "errors": sorted(r for r, why in eng.finish_reasons.items() if "error" in why.lower()),
        "finished": len(eng.finish_reasons),
        "failed_loads": sum(w.runtime.metrics.failed_loads for w in eng.workers),
        "evictions": eng.side.placement.evictions if eng.side.placement else None,
        "second_pass_hits": sum(eng.first_compute.get(f"p1-{i}", (0, 0))[0] > 0
                                for i in range(8)),
        "blocks_placed": eng.side.placement.used() if eng.side.placement else None,
        "capacity": capacity,
    }
    return finish(eng, facts)


def redis_server_killed(extra: dict[str, Any], server: Any) -> Facts:
    """The Redis server dies mid-save and mid-load: nothing stale is read, nothing failed is
    served, and every block acknowledged while it ran was there to load."""
    eng, facts = Engine(extra), {}
    first = tokens(70, 4 * BLOCK + 8)
    eng.add("A", first, max_tokens=2)
    eng.drain()
    facts["acknowledged_audit_while_up"] = eng.audit_store()
    facts["committed_before_kill"] = eng.committed(first)

    lost = tokens(71, 4 * BLOCK + 8)  # its saves are in flight when the server dies
    eng.backend.save_gate.clear()
    eng.add("S", lost, max_tokens=2)
    eng.step()
    server.kill()
    eng.backend.save_gate.set()
    eng.drain()
    facts["killed_save_committed"] = eng.committed(lost)
    server.start()  # back, empty: persistence is off, so the index now overstates

    second = tokens(72, 4 * BLOCK + 8)
    eng.add("A2", second, max_tokens=2)
    eng.drain()
    facts["acknowledged_audit_after_restart"] = [
        p for p in eng.audit_store() if not any(h in p for h in eng.block_hashes(first))]
    eng.backend.load_gate.clear()  # its load is queued when the server dies
    eng.add("L", second[:4 * BLOCK] + tokens(73, 5), max_tokens=2)
    eng.step()
    facts["load_status_after_lookup"] = eng.status("L")
    server.kill()
    eng.backend.load_gate.set()
    eng.drain()
    facts["killed_load_first_compute"] = eng.first_compute["L"]
    facts["served_after_killed_load"] = eng.committed(second)
    server.start()

    eng.add("M", first[:4 * BLOCK] + tokens(74, 5), max_tokens=2)  # index says hit; store lost it
    eng.step()
    facts["lost_on_restart_status_after_lookup"] = eng.status("M")
    eng.drain()
    facts["lost_on_restart_first_compute"] = eng.first_compute["M"]
    facts["served_after_resave"] = eng.committed(first)
    return finish(eng, facts)


def sync_hit(extra: dict[str, Any]) -> Facts:
    """A hit loaded synchronously: computed in the very step of its lookup, never parked,
    bit-exact to what the writer's forward produced."""
    eng, facts = Engine(extra), {}
    prompt = tokens(40, 4 * BLOCK + 8)
    eng.add("A", prompt, max_tokens=3)
    eng.step()
    eng.snapshot("A", 4)
    eng.drain()
    eng.add("B", prompt[:4 * BLOCK] + tokens(41, 10), max_tokens=3)
    eng.step()
    facts["status_after_first_step"] = eng.status("B")
    facts["parked"] = "B" in eng.side.parked
    facts["first_compute"] = eng.first_compute.get("B")
    facts["bit_exact_to_writer"] = eng.same_as_snapshot("B", "A", 4)
    eng.step()
    facts["pins_after_next_step"] = sorted(eng.side._pins)
    eng.drain()
    return finish(eng, facts)


def aligned_full_hit(extra: dict[str, Any]) -> Facts:
    """A prompt that ends on a block boundary, every block stored: all its blocks are loaded
    and one token is computed, into the loaded last block, in a step replayed from a full CUDA
    graph (no per-layer connector calls, as vLLM runs a one-token step); the request reads
    the writer's KV bit for bit, and a longer prompt on the same blocks loads and extends it."""
    eng, facts = Engine(extra, layer_calls=False), {}
    prompt = tokens(60, 4 * BLOCK)
    eng.add("A", prompt, max_tokens=3)
    eng.step()
    eng.snapshot("A", 4)
    eng.drain()
    eng.add("B", prompt, max_tokens=3)
    eng.run_until(lambda: "B" in eng.first_compute)
    facts["first_compute"] = eng.first_compute["B"]
    facts["bit_exact_to_writer"] = eng.same_as_snapshot("B", "A", 4)
    eng.drain()
    longer = prompt + tokens(61, BLOCK + 3)
    eng.add("C", longer, max_tokens=2)
    eng.drain()
    facts["longer_first_compute"] = eng.first_compute["C"]
    facts["longer_committed"] = eng.committed(longer)
    return finish(eng, facts)


def sync_load_failure(extra: dict[str, Any]) -> Facts:
    """A block corrupted or dropped in the slab after the scheduler counted it a hit, under
    the ``fail`` policy that sync loads require: the sync load reports the block invalid in
    its step's output, vLLM ends the request with an error (never an output computed from
    the block), the hash leaves the index, nothing the failing step computed is saved, and
    the next request with the prompt loads the good prefix and recomputes the rest."""
    eng, facts = Engine(extra), {}
    prompt = tokens(50, 4 * BLOCK + 8)
    hashes = eng.block_hashes(prompt)
    eng.add("A", prompt, max_tokens=2)
    eng.drain()
    for name, damage, bad_block in (
        ("corrupt", lambda: eng.backend.corrupt(f"{hashes[1]}.L2"), 1),
        ("deleted", lambda: eng.backend.delete([f"{hashes[2]}.L{p}" for p in range(4)]), 2),
    ):
        req = f"B-{name}"
        damage()
        # two full blocks past the loaded prefix: computed (and saved) in the failing step
        eng.add(req, prompt[:4 * BLOCK] + tokens(51 + bad_block, 2 * BLOCK + 6), max_tokens=2)
        eng.step()  # lookup, load, forward, failure reported: all in this step
        facts[f"{name}_bad_hash_served_after"] = hashes[bad_block] in eng.side.committed
        eng.drain()
        facts[f"{name}_finish"] = eng.finish_reasons.get(req, "")
        facts[f"{name}_committed_after_failure"] = eng.committed(prompt)
        retry = f"C-{name}"
        eng.add(retry, prompt, max_tokens=2)
        eng.drain()
        facts[f"{name}_retry_first_compute"] = eng.first_compute.get(retry, (0, 0))[0]
        facts[f"{name}_expected_loaded"] = bad_block * BLOCK
        facts[f"{name}_committed_after_retry"] = eng.committed(prompt)
    facts["failed_loads"] = sum(w.runtime.metrics.failed_loads for w in eng.workers)
    return finish(eng, facts)


def idle_wait(extra: dict[str, Any]) -> Facts:
    """In a step that computes nothing, the worker waits (``idle_wait_ms``) for the slab
    load it issued there: one that completes meanwhile is reported in that same step, so vLLM
    can schedule the request a step sooner. With the wait off it is reported a step later."""
    facts: Facts = {}
    for name, wait_ms in (("waits", 5000), ("no_wait", 0)):
        eng = Engine(dict(extra, idle_wait_ms=wait_ms))
        prompt = tokens(90, 4 * BLOCK + 8)
        eng.add("A", prompt, max_tokens=2)
        eng.drain()
        eng.backend.load_gate.clear()  # the load's copies are still running at its issue
        if wait_ms:
            threading.Timer(0.02, eng.backend.load_gate.set).start()  # ... and end meanwhile
        eng.add("B", prompt[:4 * BLOCK] + tokens(91, 6), max_tokens=2)
        eng.step()  # B looked up and parked, its load issued; nothing is computed
        facts[f"{name}_reported_in_issuing_step"] = (
            "B" in eng.scheduler.finished_recving_kv_req_ids)
        eng.backend.load_gate.set()
        eng.drain()
        facts[f"{name}_first_compute"] = eng.first_compute["B"]
        facts.update(finish(eng, {}))
    return facts


SCENARIOS: dict[str, Callable[[dict[str, Any]], Facts]] = {
    "lifecycles": lifecycles,
    "full_graphs": full_graphs,
    "idle_wait": idle_wait,
    "local_plus_external": local_plus_external,
    "async_timing": async_timing,
    "load_failure": load_failure,
    "store_failure": store_failure,
    "preemption": preemption,
    "abort": abort,
    "shutdown_in_flight": shutdown_in_flight,
    "two_workers": two_workers,
    "capacity_pressure": capacity_pressure,
    "aligned_full_hit": aligned_full_hit,
}
REDIS_SCENARIOS = ("lifecycles", "load_failure", "abort", "two_workers")
#: With sync loads (the host slab's default) loads never pass the worker thread's gates, so the
#: scenarios that hold a load there do not apply; these run on the slab in sync mode.
SYNC_SCENARIOS: dict[str, Callable[[dict[str, Any]], Facts]] = {
    "sync_hit": sync_hit,
    "sync_load_failure": sync_load_failure,
    "store_failure": store_failure,
    "preemption": preemption,
    "shutdown_in_flight": shutdown_in_flight,
    "two_workers": two_workers,
    "capacity_pressure": capacity_pressure,
    "aligned_full_hit": aligned_full_hit,
}
#: How each backend name of a run is configured.
MODES: dict[str, dict[str, Any]] = {
    "host": {"backend": "host", "load": "async"},
    "host-sync": {"backend": "host", "load": "sync"},
    "disk": {"backend": "disk"},
}


def _guard(fn: Callable[[], Facts]) -> Facts:
    start = time.perf_counter()
    try:
        facts = fn()
    except Exception:
        facts = {"error": traceback.format_exc()}
    facts["seconds"] = round(time.perf_counter() - start, 2)
    return facts


def run(backends: list[str]) -> dict[str, Any]:
    """Every scenario on every backend; a failing scenario records its traceback and the rest
    still run."""
    report: dict[str, Any] = {}
    for backend in backends:
        if backend == "redis":
            report["redis"] = _run_redis()
            continue
        results = {}
        for name, fn in (SYNC_SCENARIOS if backend == "host-sync" else SCENARIOS).items():
            with tempfile.TemporaryDirectory(prefix="streamcheck-kv-") as path:
                extra = dict(MODES[backend])
                if backend == "disk":
                    extra["path"] = path
                results[name] = _guard(lambda fn=fn, extra=extra: fn(extra))
        report[backend] = results
    report["threads_left"] = sorted(t.name for t in threading.enumerate()
                                    if t.name.startswith("kv-"))
    return report


def _run_redis() -> dict[str, Any]:
    from streamcheck.connector.backends.redis_server import LocalRedisServer, find_server

    if find_server() is None:
        return {"skipped": "redis-server not installed"}
    server = LocalRedisServer().start()
    try:
        results = {}
        for name in REDIS_SCENARIOS:
            extra = {"backend": "redis", "url": server.url,
                     "namespace": f"t{uuid.uuid4().hex[:10]}"}
            results[name] = _guard(lambda name=name, extra=extra: SCENARIOS[name](extra))
        extra = {"backend": "redis", "url": server.url, "namespace": f"t{uuid.uuid4().hex[:10]}"}
        results["server_killed"] = _guard(lambda: redis_server_killed(extra, server))
        return results
    finally:
        server.stop()


if __name__ == "__main__":
    import json

    import streamcheck_vllm_stubs  # noqa: F401  (vLLM's compiled modules, empty)

    print(json.dumps(run(sys.argv[1:] or ["host", "disk", "redis"]), indent=1))
