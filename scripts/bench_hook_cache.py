"""What the stream-switch hook costs when the CPU's caches are cold, as between an engine's calls.

A hook's own figure (``bench_audit.py``) is measured in a tight loop, where its code and data
stay in the CPU's caches. In an engine's step the dispatcher and the launches of other torch
calls run between two stream switches and evict them, and the stream-heavy loop measured its
hooks at several times their tight-loop figures in place (``docs/measurements.md``, tables G
and H: "the parts it hooks cost several times their per-hook figures"). This times the
``set_stream`` hook in a tight loop and after a buffer of each size was swept through the
caches before every few calls: the cold cost, which is what an engine pays. Three hooks:
``compiled`` (the compiled hook writing a switch into the compiled log's slot), ``compiled,
tuples`` (the same hook making the record tuple for a deque of them, as it did before the
compiled log: what the slots save) and ``python``.

Each round times the bare call (a C builtin standing for torch's own ``set_stream``, so only
the hook's work differs) and each hook, back to back, on fresh stream-like objects as
``torch.cuda.current_stream()`` makes them, with each auditor's switch log already full (a
long-running engine's); printed: the added ns a call, median over the rounds with a 95 %
interval (``_stats.py``), and what the slots save over the tuples, paired the same way. No GPU
is needed: the hook does the same work on any machine; run it on the engine's host to see that
host's caches.

``--path handoff`` times a connector's ``streamcheck.handoff`` the same way, with the audit
installed (the core the install chose): a write of one tensor-like object on a given stream, as
a step declares its KV once a step. In the stream-heavy loop it cost several times its
tight-loop figure in place, with the connector thread and without it (docs/measurements.md,
thirteenth session): this shows how much of that a cold cache explains, without a GPU.

    python scripts/bench_hook_cache.py [--path set_stream|handoff] [--sweeps 0,1024,4096,16384]
                                       [--rounds 15] [--groups 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from _stats import paired_added

import streamcheck
from streamcheck import installer
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


class TensorLike:
    """What a declared access reads of a tensor: its device and data pointer."""

    __slots__ = ()

    def get_device(self) -> int:
        return 0

    def data_ptr(self) -> int:
        return 0x7F0000


KV = TensorLike()


def bare_handoff(stream: Any) -> None:
    """The handoff's stand-in unaudited: a call that returns at once (as the audit's off)."""


def audited_handoff(stream: Any) -> Any:
    return streamcheck.handoff(KV, stream)


class Sweeper:
    """Touches one byte a cache line of a buffer of ``kib`` KiB (0: nothing)."""

    def __init__(self, kib: int) -> None:
        self.size = kib << 10
        self.view = memoryview(bytearray(self.size))

    def __call__(self) -> int:
        return sum(self.view[0:self.size:64]) if self.size else 0


KEPT = StreamLike()  # one stream object made current again and again (a side stream's)


def ns_per_call(fn: Callable[[Any], Any], sweep: Sweeper, groups: int, fresh: bool = True
                ) -> float:
    """The median over ``groups`` of a group's time a call: a sweep, then ``CALLS`` calls,
    each on a new stream object (``fresh``) or all on ``KEPT``."""
    times = []
    for _ in range(groups):
        sweep()
        streams = [StreamLike() if fresh else KEPT for _ in range(CALLS)]
        start = time.perf_counter_ns()
        for stream in streams:
            fn(stream)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / CALLS


# hook -> (core, the switch log its auditor's book keeps: None for the core's own)
HOOKS: dict[str, tuple[str, Callable[[int], Any] | None]] = {
    "compiled": ("compiled", None),
    "compiled, tuples": ("compiled", provenance.deque_log),
    "python": ("python", None),
    # the compiled hook made to switch to one stream object each time: its full log then
    # frees no stream object, where with new ones each switch frees one made 16,384
    # switches earlier (what that costs in place: the difference, in the same rounds)
    "compiled, one stream object": ("compiled", None),
}
ONE_STREAM = "compiled, one stream object"


def hooked(name: str) -> tuple[Gate, Callable[[Any], Any]]:
    """An auditor made with the hook's core and switch log, and the ``set_stream`` hook the
    audit installs with that core, around the stand-in."""
    core, log = HOOKS[name]
    before = "python" if speedups.active() is None else "compiled"
    speedups.use(core)
    try:
        if log is not None:
            provenance.make_switch_log = log
        gate = Gate(Auditor(Mode.RECORD))
        return gate, made_current_hook(gate, id, "bench.set_stream")
    finally:
        speedups.use(before)  # and that core's own switch log again


def measure_handoff(kib: int, rounds: int, groups: int) -> list[dict[str, Any]]:
    """One row: ``streamcheck.handoff`` with the audit installed, its rounds interleaved with
    the bare call's."""
    installer.install("assert")
    try:
        sweep = Sweeper(kib)
        bare: list[float] = []
        audited: list[float] = []
        for _ in range(rounds):
            bare.append(ns_per_call(bare_handoff, sweep, groups))
            audited.append(ns_per_call(audited_handoff, sweep, groups))
        name = f"handoff ({'compiled' if speedups.active() is not None else 'python'} core)"
    finally:
        installer.uninstall()
    added, least, most, low, high = paired_added(audited, bare)
    return [{"hook": name, "sweep_kib": kib, "added_ns": added, "interval": [low, high],
             "least": least, "most": most, "bare_ns": round(statistics.median(bare), 1)}]


def measure(names: list[str], kib: int, rounds: int, groups: int) -> list[dict[str, Any]]:
    """One row a hook, its rounds interleaved with the others' and the bare call's."""
    hooks = {name: hooked(name)[1] for name in names}
    for name, hook in hooks.items():
        for _ in range(provenance.LOG_LENGTH):  # the switch log full, as in a running engine
            hook(KEPT if name == ONE_STREAM else StreamLike())
    sweep = Sweeper(kib)
    bare: list[float] = []
    audited: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        bare.append(ns_per_call(id, sweep, groups))
        for name, hook in hooks.items():
            audited[name].append(ns_per_call(hook, sweep, groups, fresh=name != ONE_STREAM))
    rows = []
    for name in names:
        added, least, most, low, high = paired_added(audited[name], bare)
        row = {"hook": name, "sweep_kib": kib, "added_ns": added, "interval": [low, high],
               "least": least, "most": most, "bare_ns": round(statistics.median(bare), 1)}
        if name == "compiled" and "compiled, tuples" in audited:
            saved, _, _, low, high = paired_added(audited["compiled, tuples"], audited[name])
            row["saved_over_tuples_ns"], row["saved_interval"] = saved, [low, high]
        if name == "compiled" and ONE_STREAM in audited:
            freeing, _, _, low, high = paired_added(audited[name], audited[ONE_STREAM])
            row["freeing_old_stream_ns"], row["freeing_interval"] = freeing, [low, high]
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", default="0,1024,4096,16384",
                        help="buffer sizes swept before each group of calls, KiB (0: none)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--groups", type=int, default=300, help="groups of calls a round")
    parser.add_argument("--path", choices=("set_stream", "handoff"), default="set_stream",
                        help="the set_stream hook (each core) or a connector's handoff")
    args = parser.parse_args()
    sweeps = [int(s) for s in args.sweeps.split(",")]
    if any(s < 0 for s in sweeps) or args.rounds < 1 or args.groups < 1:
        parser.error("sweeps must be >= 0 KiB, rounds and groups >= 1")
    if args.path == "handoff":
        rows = [row for kib in sweeps for row in measure_handoff(kib, args.rounds, args.groups)]
        names = [rows[0]["hook"]]
    else:
        names = list(HOOKS) if speedups.built() else ["python"]
        rows = [row for kib in sweeps for row in measure(names, kib, args.rounds, args.groups)]
    for row in rows:
        print(json.dumps(row))
    for name in names:
        mine = [r for r in rows if r["hook"] == name]
        hot = next((r["added_ns"] for r in mine if r["sweep_kib"] == 0), None)
        print(f"{name}: added ns a call " + ", ".join(
            f"{r['sweep_kib']} KiB {r['added_ns']:.0f}" for r in mine) + (
            "; cold over hot " + ", ".join(f"{r['sweep_kib']} KiB {r['added_ns'] / hot:.2f}x"
                                           for r in mine if r["sweep_kib"]) if hot else ""))
    for r in rows:
        if "saved_over_tuples_ns" in r:
            low, high = r["saved_interval"]
            print(f"slots save over tuples at {r['sweep_kib']} KiB: {r['saved_over_tuples_ns']:.0f}"
                  f" ns a switch ({low}-{high})")
        if "freeing_old_stream_ns" in r:
            low, high = r["freeing_interval"]
            print(f"a new stream object each switch (the oldest freed) over one object, at "
                  f"{r['sweep_kib']} KiB: {r['freeing_old_stream_ns']:.0f} ns a switch "
                  f"({low}-{high})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
