"""Connector data path vs the machine's own copy bandwidth, and scheduler cost vs parked requests.

All ratios come from one run on the machine it runs on:
1. anchors: one 1 GiB pinned host<->device copy each way, and 2048 separate 64 KiB copies;
2. the connector saving 2048 scattered 64 KiB blocks (device gather + one copy into pinned
   staging) and loading them back into other blocks (one copy + device scatter): the copy stage
   alone, and end to end through a key-value backend (which adds a host memcpy and a CRC-32
   per block); then end to end through the host slab the connector uses for ``host`` (the
   device copies straight into pinned slots, sums checked on the device), as the engine drives
   it (32 planes, 8 requests of 112 blocks), with consecutive and with scattered slots; plus
   the device scatter kernel alone on the same bytes viewed as bytes and as 8-byte words;
3. the scheduler side's per-step cost (``build``) with 10, 1,000 and 10,000 parked requests.
Part 3 runs anywhere; parts 1-2 need a CUDA GPU.
"""

from __future__ import annotations

import statistics
import time

import torch

from streamcheck.connector.placement import Placement
from streamcheck.connector.scheduler_side import SchedulerSide

BLOCK = 64 * 1024
N_BLOCKS = 2048


def copy_gbps(src: torch.Tensor, dst: torch.Tensor, reps: int = 10) -> float:
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            dst.copy_(src, non_blocking=True)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            dst.copy_(src, non_blocking=True)
        end.record()
    end.synchronize()
    return src.numel() * src.element_size() * reps / (start.elapsed_time(end) / 1e3) / 1e9


def per_block_gbps(device_blocks: torch.Tensor, host_blocks: torch.Tensor) -> float:
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for i in range(N_BLOCKS):
            host_blocks[i].copy_(device_blocks[i], non_blocking=True)
        stream.synchronize()
        t = time.perf_counter()
        for i in range(N_BLOCKS):
            host_blocks[i].copy_(device_blocks[i], non_blocking=True)
        stream.synchronize()
    return N_BLOCKS * BLOCK / (time.perf_counter() - t) / 1e9


def scatter_us(words: bool, reps: int = 20) -> float:
    """Median microseconds of the load path's device scatter of 2048 64 KiB blocks."""
    from streamcheck.connector.worker_side import word_view

    kv = torch.zeros(4 * N_BLOCKS, BLOCK, dtype=torch.uint8, device="cuda")
    src = torch.ones(N_BLOCKS, BLOCK, dtype=torch.uint8, device="cuda")
    index = torch.randperm(4 * N_BLOCKS, device="cuda")[:N_BLOCKS]
    if words:
        kv, src = word_view(kv), word_view(src)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        kv.index_copy_(0, index, src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times[2:])


def connector_gbps(rounds: int = 5) -> dict[str, float]:
    from streamcheck.connector.backends import HostBackend
    from streamcheck.connector.worker_side import ConnectorRuntime

    total_blocks = 4 * N_BLOCKS
    kv = torch.randint(0, 255, (total_blocks, BLOCK), dtype=torch.uint8, device="cuda")
    backend = HostBackend(capacity_blocks=N_BLOCKS + 16, block_nbytes=BLOCK, pin_memory=True)
    rt = ConnectorRuntime(backend, [kv], torch.device("cuda", 0), staging_blocks=N_BLOCKS)
    g = torch.Generator().manual_seed(0)
    results: dict[str, list[float]] = {"save_copy": [], "save_e2e": [], "load_copy": [],
                                       "load_e2e": []}
    exact = True
    for r in range(rounds + 1):
        perm = torch.randperm(total_blocks, generator=g)
        src, dst = perm[:N_BLOCKS].tolist(), perm[N_BLOCKS:2 * N_BLOCKS].tolist()
        keys = [f"r{r}b{i}" for i in range(N_BLOCKS)]
        rt.metrics.save.__init__()
        rt.metrics.load.__init__()
        rt.save_layer(f"s{r}", 0, src, keys)
        rt.seal([f"s{r}"])
        while rt.pending():
            time.sleep(0.0005)
        rt.start_load("l", {0: (dst, keys)})
        while rt.pending():
            time.sleep(0.0005)
        news = rt.poll()
        assert news.saves_ok == {f"s{r}"} and not news.failed_load_blocks
        rt.wait_for_loads()
        torch.cuda.synchronize()
        exact &= bool(torch.equal(kv[dst], kv[src]))
        if r:  # the first round warms up
            m = rt.metrics
            results["save_copy"].append(m.save.copy_gbps)
            results["save_e2e"].append(m.save.gbps)
            results["load_copy"].append(m.load.copy_gbps)
            results["load_e2e"].append(m.load.gbps)
    rt.shutdown()
    out = {k: statistics.median(v) for k, v in results.items()}
    out["bit_exact"] = float(exact)
    return out


PLANES, REQUEST_BLOCKS, REQUESTS = 32, 112, 8  # a 675M Llama: 16 layers x K/V, 1,792 tokens


def slab_gbps(scattered: bool, rounds: int = 4, held: bool = False) -> dict[str, float]:
    """End to end through the host slab: 8 requests of 112 blocks, every one of 32 planes
    saved (one call per layer per request) and loaded back into other blocks; wall time from
    the first call to the last completion, both ways. Slots are consecutive per request (the
    placement's usual case) or ``scattered`` (every block its own run: the worst
    fragmentation). ``held``: as the vLLM connector drives it, saves held until the request's
    ``seal`` and issued then by the calling thread as one job a request (retired by polls);
    otherwise each layer's save is a job for the worker thread."""
    from streamcheck.connector.slab import HostSlab
    from streamcheck.connector.worker_side import ConnectorRuntime, PollResult

    total = 2 * REQUESTS * REQUEST_BLOCKS
    kv = [torch.randint(0, 255, (total, BLOCK), dtype=torch.uint8, device="cuda")
          for _ in range(PLANES)]
    slab = HostSlab(PLANES, REQUESTS * REQUEST_BLOCKS, BLOCK, pin_memory=True)
    rt = ConnectorRuntime(slab, kv, torch.device("cuda", 0), hold_saves=held)
    g = torch.Generator().manual_seed(1)
    nbytes = PLANES * REQUESTS * REQUEST_BLOCKS * BLOCK
    save, load = [], []
    exact = True
    for r in range(rounds + 1):
        perm = torch.randperm(total, generator=g).tolist()
        slots = list(range(REQUESTS * REQUEST_BLOCKS))
        if scattered:
            slots = torch.randperm(len(slots), generator=g).tolist()
        start = time.perf_counter()
        for q in range(REQUESTS):  # as the engine saves: one call per layer (K and V)
            ids = perm[q * REQUEST_BLOCKS:(q + 1) * REQUEST_BLOCKS]
            part = slots[q * REQUEST_BLOCKS:(q + 1) * REQUEST_BLOCKS]
            tags = [hash(f"r{r}q{q}b{b}") | 1 for b in ids]
            for layer in range(PLANES // 2):
                rt.save_planes(f"s{r}.{q}", (2 * layer, 2 * layer + 1), ids, part, tags)
            rt.seal([f"s{r}.{q}"])
        news = PollResult()
        while rt.pending():  # polled as the engine's get_finished does (it retires held saves)
            news.merge(rt.poll())
            time.sleep(0.0001)
        saved = time.perf_counter()
        for q in range(REQUESTS):  # as the engine loads: one call per request, every plane
            src = perm[q * REQUEST_BLOCKS:(q + 1) * REQUEST_BLOCKS]
            dst = perm[(REQUESTS + q) * REQUEST_BLOCKS:(REQUESTS + q + 1) * REQUEST_BLOCKS]
            part = slots[q * REQUEST_BLOCKS:(q + 1) * REQUEST_BLOCKS]
            tags = [hash(f"r{r}q{q}b{b}") | 1 for b in src]
            rt.load_planes(f"l{q}", range(PLANES), dst, part, tags)
        while rt.pending():  # polled as the engine's get_finished does: it retires the loads
            news.merge(rt.poll())
            time.sleep(0.0001)
        loaded = time.perf_counter()
        news.merge(rt.poll())
        assert not news.failed_load_blocks and len(news.saves_ok) == REQUESTS
        torch.cuda.synchronize()
        if r:  # the first round warms up (pinned allocations, kernels)
            save.append(nbytes / (saved - start) / 1e9)
            load.append(nbytes / (loaded - saved) / 1e9)
        src_all = perm[:REQUESTS * REQUEST_BLOCKS]
        dst_all = perm[REQUESTS * REQUEST_BLOCKS:2 * REQUESTS * REQUEST_BLOCKS]
        exact &= all(bool(torch.equal(k[dst_all], k[src_all])) for k in kv[:4])
    rt.shutdown()
    return {"save": statistics.median(save), "load": statistics.median(load),
            "bit_exact": float(exact), "gib": nbytes / 2**30}


def scheduler_cost(parked: int, steps: int = 200) -> float:
    """Median microseconds of one build() with ``parked`` requests waiting for KV."""
    side = SchedulerSide(block_size=16)
    prompt = list(range(16 * 8))
    for i in range(parked):
        side.track(f"p{i}", prompt)
        side.after_alloc(f"p{i}", list(range(8)), 16 * 7)
    side.build([])  # hand the parked loads to the workers once
    running = [(f"run{i}", list(range(8)), True, 16 * 8) for i in range(32)]
    for rid, _, _, _ in running:
        side.track(rid, prompt)
    times = []
    for _ in range(steps):
        t = time.perf_counter_ns()
        side.build(running)
        times.append(time.perf_counter_ns() - t)
    assert len(side.parked) == parked
    return statistics.median(times) / 1000


def request_cost(rounds: int = 100) -> tuple[float, float]:
    """Median microseconds of the scheduler's bookkeeping for one request of the engine TTFT
    cases' shape (1,792 tokens: 112 blocks of 16, a placed store of 2,048 blocks): cold
    (looked up, saved, its saves reported) and warm (looked up, its load planned, sent and
    reported, its prefill built). What the store's placement costs the engine's thread."""
    prompts = [[(s * 7919 + i * 104729) % 50_000 + 1 for i in range(1792)] for s in range(8)]
    cold, warm = [], []
    for _ in range(rounds):
        side = SchedulerSide(block_size=16, placement=Placement(2048))
        t = time.perf_counter_ns()
        for k, prompt in enumerate(prompts):
            side.matched_tokens(f"c{k}", prompt, 0)
            meta = side.build([(f"c{k}", list(range(k * 112, k * 112 + 112)), True, 1792)])
            side.on_worker_report({s.group: 1 for s in meta.saves}, {}, (), ())
            side.finished(f"c{k}")
        cold.append((time.perf_counter_ns() - t) / len(prompts))
        t = time.perf_counter_ns()
        for k, prompt in enumerate(prompts):
            hit, _ = side.matched_tokens(f"w{k}", prompt, 0)
            blocks = list(range(1000 + k * 112, 1000 + k * 112 + 112))
            side.after_alloc(f"w{k}", blocks, hit)
            if not side.build([]).loads:
                raise RuntimeError("the warm request planned no load: nothing was measured")
            side.on_worker_report({}, {}, (), [f"w{k}"])
            side.build([(f"w{k}", blocks, True, 1792)])
            side.finished(f"w{k}")
        warm.append((time.perf_counter_ns() - t) / len(prompts))
    return statistics.median(cold) / 1000, statistics.median(warm) / 1000


def main() -> None:
    rows: list[tuple[str, str]] = []
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
        host = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
        dev = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
        h2d, d2h = copy_gbps(host, dev), copy_gbps(dev, host)
        small_dev = torch.empty(N_BLOCKS, BLOCK, dtype=torch.uint8, device="cuda")
        small_host = torch.empty(N_BLOCKS, BLOCK, dtype=torch.uint8, pin_memory=True)
        per_block = per_block_gbps(small_dev, small_host)
        del host, dev
        c = connector_gbps()
        slab = slab_gbps(scattered=False)
        held = slab_gbps(scattered=False, held=True)
        frag = slab_gbps(scattered=True)
        byte_us, word_us = scatter_us(words=False), scatter_us(words=True)
        rows += [
            ("GPU", torch.cuda.get_device_name(0)),
            ("anchor pinned H2D 1 GiB GB/s", f"{h2d:.1f}"),
            ("anchor pinned D2H 1 GiB GB/s", f"{d2h:.1f}"),
            ("2048 separate 64 KiB D2H copies GB/s", f"{per_block:.1f}"),
            ("connector save, copy stage GB/s", f"{c['save_copy']:.1f}"),
            ("  vs D2H anchor", f"{c['save_copy'] / d2h:.1%}"),
            ("connector load, copy stage GB/s", f"{c['load_copy']:.1f}"),
            ("  vs H2D anchor", f"{c['load_copy'] / h2d:.1%}"),
            ("key-value backend path: save end to end (HostBackend) GB/s",
             f"{c['save_e2e']:.1f}"),
            ("key-value backend path: load end to end (HostBackend) GB/s",
             f"{c['load_e2e']:.1f}"),
            (f"host slab save end to end ({slab['gib']:.2f} GiB, 32 planes) GB/s",
             f"{slab['save']:.1f}"),
            ("  vs D2H anchor", f"{slab['save'] / d2h:.1%}"),
            ("host slab load end to end GB/s", f"{slab['load']:.1f}"),
            ("  vs H2D anchor", f"{slab['load'] / h2d:.1%}"),
            ("host slab, saves held to seal (the vLLM connector's way): save GB/s",
             f"{held['save']:.1f}"),
            ("  vs D2H anchor", f"{held['save'] / d2h:.1%}"),
            ("host slab, every block its own run: save / load GB/s",
             f"{frag['save']:.1f} / {frag['load']:.1f}"),
            ("round trips bit-exact", "yes" if c["bit_exact"] and slab["bit_exact"]
             and held["bit_exact"] and frag["bit_exact"] else "NO"),
            ("device scatter of 128 MiB: bytes / 8-byte words us",
             f"{byte_us:.0f} / {word_us:.0f}"),
        ]
    else:
        rows.append(("GPU", "none visible: copy bandwidth parts skipped"))
    costs = {n: scheduler_cost(n) for n in (10, 1000, 10000)}
    rows += [(f"scheduler build() with {n} parked, us", f"{v:.1f}") for n, v in costs.items()]
    rows.append(("ratio 10,000 / 10 parked", f"{costs[10000] / costs[10]:.3f}"))
    cold_us, warm_us = request_cost()
    rows.append(("scheduler, one 112-block request on a placed store: cold / warm us",
                 f"{cold_us:.0f} / {warm_us:.0f}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
