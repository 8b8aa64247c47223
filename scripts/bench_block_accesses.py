"""What the audit's check of a KV load's block writes costs the engine thread, on the simulator.

In the real engine (docs/measurements.md, G10) the connector's audit added 1.7-2.1 ms to an
async load's warm TTFT, before the load was reported, and a profile of the engine's thread put
a third of the load's issue in ``streamcheck.launch``'s check of its writes: the 32 planes (16
layers, K and V) of 112 blocks, each plane's kept accesses scanned for overlaps. This replays
that pattern on the CPU simulator, without torch's CUDA: per step, a load of 112 blocks
(different ones each step: other requests' blocks) on the load stream, checked as the
connector checks it (``launch(..., writes=[blocks of each plane])``), completed and polled
(``Event.query``) by the engine, then the forward's declared reads of those blocks on the
engine's stream and a sync of it (the engine's sampled tokens). Prints microseconds a step for
the load's check and for the read declaration, and how many accesses a plane keeps; then the
same without the host's waits, where every access is kept up to the bound (as every access
was before the audit dropped those the host waited for), and the ratio of the two checks.

    python scripts/bench_block_accesses.py [--steps 400] [--planes 32] [--blocks 112]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import streamcheck
from streamcheck import installer
from streamcheck.runtime.sim import SimCuda, SimMachine
from streamcheck.runtime.sim.tensor import SimTensors
from streamcheck.wrappers.user_launch import BlockSet, tensor_key


def run(steps: int, planes: int, blocks: int, pool: int, waits: bool = True
        ) -> dict[str, float]:
    auditor = installer.install("assert")
    try:
        machine = SimMachine(1)
        api = SimCuda(machine)
        installer.instrument_sim(api)
        tensors = SimTensors(machine)
        kv = [tensors.randn(pool, 4) for _ in range(planes)]
        engine, load = api.Stream(), api.Stream()
        check_us: list[float] = []
        read_us: list[float] = []
        for step in range(steps):
            first = (step * blocks) % (pool - blocks)
            ids = frozenset(range(first, first + blocks))  # one set for every plane, as the
            named = [BlockSet(p, ids) for p in kv]  # connector names them (its _blocksets)
            ready = api.Event()
            ready.record(engine)
            load.wait_event(ready)  # the forward's earlier reads come first
            start = time.perf_counter()
            with streamcheck.launch("connector.load.scatter", stream=load, device=0,
                                    writes=named):
                pass
            check_us.append((time.perf_counter() - start) * 1e6)
            done = api.Event()
            done.record(load)
            if waits:
                load.synchronize()  # the copies ran; the engine's poll sees them done
                if not done.query():
                    raise RuntimeError("the simulated load did not complete")
            engine.wait_event(done)
            start = time.perf_counter()
            streamcheck.handoffs(named, engine, "read")
            read_us.append((time.perf_counter() - start) * 1e6)
            if waits:
                engine.synchronize()  # the step's sampled tokens come back to the host
        key = tensor_key(kv[0])
        kept = len(auditor._writes.get(key, ())) + len(auditor._reads.get(key, ()))
        findings = len(auditor.findings())
    finally:
        installer.uninstall()
    warm = steps // 4  # the lists fill over the first steps
    return {"load_check_us": round(statistics.median(check_us[warm:]), 1),
            "read_declaration_us": round(statistics.median(read_us[warm:]), 1),
            "accesses_kept_a_plane": kept, "findings": findings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--planes", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=112)
    parser.add_argument("--pool", type=int, default=4096, help="blocks in a plane")
    args = parser.parse_args()
    if min(args.steps, args.planes, args.blocks) < 1 or args.pool <= args.blocks:
        parser.error("--steps, --planes, --blocks must be positive and --pool > --blocks")
    results = {}
    for name, waits in (("host waits each step", True), ("no host waits", False)):
        result = results[name] = run(args.steps, args.planes, args.blocks, args.pool, waits)
        print(f"{name}: a load of {args.blocks} blocks in {args.planes} planes: its check "
              f"{result['load_check_us']} us, the forward's read declaration "
              f"{result['read_declaration_us']} us (medians); "
              f"{result['accesses_kept_a_plane']} accesses kept a plane; "
              f"{result['findings']} findings")
    waited, kept = results["host waits each step"], results["no host waits"]
    print(f"the check with every access kept over the check with waited-for ones dropped: "
          f"{kept['load_check_us'] / waited['load_check_us']:.1f} x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
