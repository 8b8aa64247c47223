"""What the stream-switch hook costs when the CPU's caches are cold, as between an engine's calls.

A hook's own figure (``bench_audit.py``) is measured in a tight loop, where its code and data
stay in the CPU's caches. In an engine's step the dispatcher and the launches of other torch
calls run between two stream switches and evict them, and the stream-heavy loop measured its
hooks at several times their tight-loop figures in place (``docs/measurements.md``, tables G
and H: "the parts it hooks cost several times their per-hook figures"). This times the
``set_stream`` hook (compiled, and Python) in a tight loop and after a buffer of each size was
swept through the caches before every few calls: the cold cost, which is what an engine pays.

Each round times the bare call (a C builtin standing for torch's own ``set_stream``, so only
the hook's work differs) and the hooked one back to back, on fresh stream-like objects as
``torch.cuda.current_stream()`` makes them, with the auditor's switch log already full (a
long-running engine's); printed: the added ns a call, median over the rounds with a 95 %
interval (``_stats.py``). No GPU is needed: the hook does the same work on any machine; run it
on the engine's host to see that host's caches.

    python scripts/bench_hook_cache.py [--sweeps 0,1024,4096,16384] [--rounds 15] [--groups 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from _stats import paired_added

from streamcheck.core import provenance
from streamcheck.core.auditor import Auditor
from streamcheck.core.modes import Mode
from streamcheck.wrappers import speedups
from streamcheck.wrappers.gate import Gate
from streamcheck.wrappers.streams import made_current_hook

CALLS = 4  # calls timed after each sweep: the first meets the cold caches, as in an engine


class StreamLike:
    """What the hook keeps of a stream: the object itself (its fields are read only for a
    finding)."""

    __slots__ = ("device_index", "stream_id")

    def __init__(self) -> None:
        self.device_index, self.stream_id = 0, 3


class Sweeper:
    """Touches one byte a cache line of a buffer of ``kib`` KiB (0: nothing)."""

    def __init__(self, kib: int) -> None:
        self.size = kib << 10
        self.view = memoryview(bytearray(self.size))

    def __call__(self) -> int:
        return sum(self.view[0:self.size:64]) if self.size else 0


def ns_per_call(fn: Callable[[Any], Any], sweep: Sweeper, groups: int) -> float:
    """The median over ``groups`` of a group's time a call: a sweep, then ``CALLS`` calls."""
    times = []
    for _ in range(groups):
        sweep()
        streams = [StreamLike() for _ in range(CALLS)]
        start = time.perf_counter_ns()
        for stream in streams:
            fn(stream)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / CALLS


def hooked(core: str, gate: Gate) -> Callable[[Any], Any]:
    """The ``set_stream`` hook the audit installs with ``core``, around the stand-in."""
    speedups.use(core)
    try:
        return made_current_hook(gate, id, "bench.set_stream")
    finally:
        speedups.use("auto")


def measure(core: str, kib: int, rounds: int, groups: int) -> dict[str, Any]:
    gate = Gate(Auditor(Mode.RECORD))
    hook = hooked(core, gate)
    for _ in range(provenance.LOG_LENGTH):  # the switch log full, as in a running engine
        hook(StreamLike())
    sweep = Sweeper(kib)
    bare, audited = [], []
    for _ in range(rounds):
        bare.append(ns_per_call(id, sweep, groups))
        audited.append(ns_per_call(hook, sweep, groups))
    added, least, most, low, high = paired_added(audited, bare)
    return {"core": core, "sweep_kib": kib, "added_ns": added, "interval": [low, high],
            "least": least, "most": most, "bare_ns": round(statistics.median(bare), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", default="0,1024,4096,16384",
                        help="buffer sizes swept before each group of calls, KiB (0: none)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--groups", type=int, default=300, help="groups of calls a round")
    args = parser.parse_args()
    sweeps = [int(s) for s in args.sweeps.split(",")]
    if any(s < 0 for s in sweeps) or args.rounds < 1 or args.groups < 1:
        parser.error("sweeps must be >= 0 KiB, rounds and groups >= 1")
    cores = ["compiled", "python"] if speedups.built() else ["python"]
    rows = [measure(core, kib, args.rounds, args.groups) for core in cores for kib in sweeps]
    for row in rows:
        print(json.dumps(row))
    for core in cores:
        mine = [r for r in rows if r["core"] == core]
        hot = next((r["added_ns"] for r in mine if r["sweep_kib"] == 0), None)
        if hot:
            print(f"{core}: added ns a call, cold over hot: " + ", ".join(
                f"{r['sweep_kib']} KiB {r['added_ns'] / hot:.2f}x" for r in mine
                if r["sweep_kib"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
