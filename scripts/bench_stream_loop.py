"""A stream-heavy tensor-parallel loop, audited (assert) vs unaudited, measured in one run.

What an engine step does to the audit's hooks, at launch-bound sizes so that the audit's share
is as large as it gets: per layer a side stream entered with ``torch.cuda.stream`` (two
``set_stream`` calls, two ``current_stream`` objects), ``wait_stream`` both ways (event record
and wait), a small matmul on each stream and a ``torch.distributed`` all-reduce; per step an
event the connector thread waits on before copying the step's KV to pinned memory on its own
stream (declared to streamcheck as a handoff, so the happens-before clocks are live).

One process per GPU (2 ranks on 2 GPUs). Each round runs the loop unaudited and audited
(install and uninstall between runs, outside the timed region), the runs' order turning from
round to round (``in_turn``) so that neither a drift nor a run's place in its round favours
one of them; the median per-iteration
time of each is printed with their ratio, and each round's own ratio (audited over the same
round's unaudited run) with a 95 % interval for its median: the verdict on the 1.03 target
comes from that interval (``_stats.py``: met only if it lies at or under 1.03 on every rank),
because on a noisy host one ratio can land on either side of the target by chance. Each
round's first iteration is timed apart (``first_iteration_us``): the audit's first declared
access puts its event hooks in, once per process in an engine but once per round here, so it
is shown, not spread over the round.
The correct program must produce zero findings.

    python scripts/bench_stream_loop.py [--iters 50] [--rounds 12] [--layers 16] [--ablate]
                                        [--arm-without Stream.wait_stream] [--gc-census N]
                                        [--core both|compiled|python]

``--ablate`` also runs the loop with one part left out at a time (the side stream, the
all-reduce, the connector thread, the handoff that makes the clocks live) and prints each
variant's ratio: where the audit's cost in this loop comes from, measured, not guessed; the
loop without the step's handoff but with the clocks made live once
(``without_handoff_clocks_live``: the event hooks' work stays, the handoff and the connector
thread's checked read go); and
the whole loop with less of the audit's state kept (``short_switch_log``, ``gc_frozen``),
with the compiled hooks with the switches kept as tuples (``tuple_switch_log``: what the
compiled log's slots save in place), and with the GIL handed over ten times as often
(``short_gil_switch``).
``--arm-without Stream.wait_stream`` adds an audited run to every round, the compiled hooks
with ``wait_stream``'s own hook taken out again (its edge then made by the event hooks, as the
Python core makes it): what that hook saves, in the same rounds as the rest.
``--arm-without checks`` adds a run with every hook installed (the event hooks too, by the
round's first iteration) and the gate holding no auditor, so each hook passes its call
straight through: what interposing costs before anything is checked, the floor under the
audit's own cost in this loop. The installed ``torch.cuda.current_stream`` skips torch's own
Python frames (``streams.fast_current_stream``), so that floor is under the unaudited loop;
``--arm-without "checks and current_stream"`` puts torch's own back for the run as well.
``--arm-without Auditor.declare``, ``--arm-without launch.check`` and ``--arm-without
streamcheck.handoff`` do the same with the auditor's declare, the connector's checked launch,
and the step's handoff (all but the declare it calls), left in Python.
``--core compiled`` (or ``python``) times only those hooks: a round is then two runs, not
three, so the same time holds half as many rounds again (the interval narrows with them).
``--hook-ablate`` runs the whole loop audited (``record``) with one group of hooks taken out
again (set stream, stream creation, event record and wait, host waits, the collective; and
none, the baseline): what each hook costs where it runs, beside everything else, not in a loop
of its own. Without the event hooks the audit cannot see the connector wait for the step's event and
records the handoff as unsynced (the count is printed; the correct program is unchanged). Each
rank also prints ``split``: per iteration, the time to queue the steps, the main thread's CPU
time in them, the waits for the GPU and for the connector thread's backlog afterwards, and that
thread's CPU time in its jobs (unaudited and audited, median over rounds; it includes the
time ``stream.synchronize()`` spins, so it says how long the thread held a core, not what the
audit cost it; ``saver_queue_us`` is its part before that wait: its Python and launches), and
the cyclic collector's time and runs per iteration (``gc_us``, ``gc0_per_iter``...).
``--gc-census N`` runs N more rounds taking, at every young collection, the young
generation's objects by type (per collection, the 15 most common) and the young collections an
iteration, unaudited and audited: what the audit keeps alive that makes the collector run.
``--phases`` times each part of a step in the main thread, unaudited and
audited, with the connector thread and without it: which calls the audit makes slower in
place, hooked or not (a call it does not hook that slows down only beside the connector thread
is waiting for the GIL).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import gc
import json
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _cores import add_core_option, chosen_cores
from _paused import audit_paused
from _ranks import run_ranks
from _stats import in_turn, paired_ratio, target_verdict

import streamcheck
from streamcheck import installer
from streamcheck.wrappers import speedups, user_launch


class KVSaver(threading.Thread):
    """The connector: waits on the engine's event on its own stream, copies KV to pinned."""

    def __init__(self, device: int, kv: torch.Tensor) -> None:
        super().__init__(name="kv-saver", daemon=True)
        self.device, self.kv = device, kv
        self.jobs: queue.Queue[Any] = queue.Queue()
        self.pinned = torch.empty(kv.shape, dtype=kv.dtype, pin_memory=True)
        self.done = 0
        self.submitted = 0
        self.cpu_s = 0.0  # this thread's CPU time in its jobs (time.thread_time)
        self.queue_s = 0.0  # of which before stream.synchronize(): its Python and launches

    def run(self) -> None:
        torch.cuda.set_device(self.device)
        stream = torch.cuda.Stream()
        while True:
            job = self.jobs.get()
            if job is None:
                return
            event, handoff = job
            cpu = time.thread_time()
            stream.wait_event(event)
            reads = [handoff] if handoff is not None else []
            with torch.cuda.stream(stream), streamcheck.launch(
                    "bench.kv.save", stream=stream, device=self.device, reads=reads):
                self.pinned.copy_(self.kv, non_blocking=True)
            queued = time.thread_time()
            stream.synchronize()
            self.queue_s += queued - cpu
            self.cpu_s += time.thread_time() - cpu
            self.done += 1


class GcMeter:
    """The cyclic collector's work in this process (``gc.callbacks``): whether the audit's
    allocations (its records, kept until newer ones push them out) make the collector run
    more often, and what that costs an iteration."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = 0.0
        self._start = 0.0
        #: ``--gc-census``: the young generation's objects by type at each young collection
        #: (what the collector found to scan: the objects made since the last one and alive)
        self.census: collections.Counter[str] | None = None
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            if self.census is not None and info["generation"] == 0:
                self.census.update(_type_name(o) for o in gc.get_objects(generation=0))
            self._start = time.perf_counter()
        else:
            self.count[info["generation"]] += 1
            self.seconds += time.perf_counter() - self._start

    def snapshot(self) -> tuple[list[int], float]:
        return list(self.count), self.seconds

    def since(self, before: tuple[list[int], float], iters: int) -> dict[str, float]:
        """Per iteration since ``before``: microseconds collecting, and collections of each
        generation (all threads)."""
        counts, seconds = before
        return {"gc_us": (self.seconds - seconds) / iters * 1e6,
                **{f"gc{g}_per_iter": (self.count[g] - counts[g]) / iters for g in range(3)}}


def _type_name(thing: Any) -> str:
    kind = type(thing)
    return f"{kind.__module__}.{kind.__qualname__}"


gc_meter = GcMeter()

PARTS = ("side", "allreduce", "saver", "handoff")
COMPILED_DECLARE = "Auditor.declare"  # --arm-without: the compiled core, Python's declare
COMPILED_LAUNCH_CHECK = "launch.check"  # --arm-without: the compiled core, Python's check
COMPILED_HANDOFF = "streamcheck.handoff"  # --arm-without: the compiled core, Python's handoff
PAUSED = "checks"  # --arm-without: every hook installed, the gate holding no auditor
# --arm-without: the same with torch's own current_stream() back in place of the audit's
PAUSED_TORCH = "checks and current_stream"
PAUSED_ARMS = (PAUSED, PAUSED_TORCH)
SHORT_GIL_SWITCH_S = 0.0005  # the state ablation's GIL switch interval (CPython's: 0.005)


def step(layers: int, x: torch.Tensor, w: torch.Tensor, side: torch.cuda.Stream,
         kv: torch.Tensor, saver: KVSaver, parts: frozenset[str] = frozenset(PARTS)
         ) -> torch.Tensor:
    """One engine step; ``parts`` leaves out what it does not name (``--ablate``)."""
    main = torch.cuda.current_stream()
    for _ in range(layers):
        if "side" in parts:
            side.wait_stream(main)
            with torch.cuda.stream(side):
                y = x @ w
            main.wait_stream(side)
        else:
            y = x @ w
        x = torch.tanh(x @ w + y)
        if "allreduce" in parts:
            dist.all_reduce(x)
    kv.copy_(x[: kv.shape[0]], non_blocking=True)
    if "saver" in parts:
        handoff = streamcheck.handoff(kv) if "handoff" in parts else None
        event = torch.cuda.Event()
        event.record()
        saver.jobs.put((event, handoff))
        saver.submitted += 1
    return x


class Phases:
    """``--phases``: the main thread's wall time in each part of a step, summed over a run."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.last = 0

    def __call__(self, name: str) -> None:
        """The time since the previous call goes to ``name``."""
        now = time.perf_counter_ns()
        self.totals[name] = self.totals.get(name, 0) + now - self.last
        self.last = now


def step_phased(layers: int, x: torch.Tensor, w: torch.Tensor, side: torch.cuda.Stream,
                kv: torch.Tensor, saver: KVSaver | None, tick: Phases) -> torch.Tensor:
    """:func:`step` with every part timed (``--phases``): which calls the audit makes slower
    in place, hooked or not (a call it does not hook that slows down waits for the GIL).
    ``saver`` None: the step without its connector thread: the same handoff, event and record,
    no job queued, so that only the thread differs (the handoff's own cost in place, with no
    other thread's Python to wait for)."""
    tick.last = time.perf_counter_ns()
    main = torch.cuda.current_stream()
    tick("current_stream")
    for _ in range(layers):
        side.wait_stream(main)
        tick("side.wait_stream(main)")
        ctx = torch.cuda.stream(side)
        ctx.__enter__()
        tick("stream context enter")
        y = x @ w
        tick("matmul on side")
        ctx.__exit__(None, None, None)
        tick("stream context exit")
        main.wait_stream(side)
        tick("main.wait_stream(side)")
        x = torch.tanh(x @ w + y)
        tick("matmul, add, tanh")
        dist.all_reduce(x)
        tick("all_reduce")
    kv.copy_(x[: kv.shape[0]], non_blocking=True)
    tick("kv copy")
    handoff = streamcheck.handoff(kv)
    tick("handoff")
    event = torch.cuda.Event()
    tick("Event()")
    event.record()
    tick("Event.record")
    if saver is None:  # no connector thread to take the GIL in between
        return x
    saver.jobs.put((event, handoff))
    saver.submitted += 1
    tick("queue put")
    return x


def rank_main(rank: int, world: int, port: int, args: argparse.Namespace,
              out: mp.Queue) -> None:
    torch.cuda.set_device(rank)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world,
                            device_id=torch.device("cuda", rank))
    torch.manual_seed(0)
    x0 = torch.randn(16, 256, device="cuda") / 16
    w = torch.randn(256, 256, device="cuda") / 16
    kv = torch.empty(16, 256, device="cuda")
    side = torch.cuda.Stream()
    saver = KVSaver(rank, kv)
    saver.start()

    split: dict[str, list[dict[str, float]]] = {"unaudited": [], "audited": []}

    def drain() -> None:
        """Wait for the connector thread's backlog: it keeps up, or this waits."""
        while saver.done < saver.submitted:
            if not saver.is_alive():
                raise RuntimeError("the connector thread died (its traceback is above)")
            time.sleep(0.0001)

    def run(iters: int, parts: frozenset[str] = frozenset(PARTS), into: str = "") -> float:
        """Microseconds per iteration; with ``into``, also where they went (``split``)."""
        dist.barrier()
        torch.cuda.synchronize()
        saver_cpu, saver_queue, collected = saver.cpu_s, saver.queue_s, gc_meter.snapshot()
        start, cpu = time.perf_counter(), time.thread_time()
        x = x0
        for _ in range(iters):
            x = step(args.layers, x, w, side, kv, saver, parts)
        steps_end, steps_cpu = time.perf_counter(), time.thread_time()
        torch.cuda.synchronize()
        synced = time.perf_counter()
        drain()
        end = time.perf_counter()
        if into:
            split[into].append({
                "steps_us": (steps_end - start) / iters * 1e6,
                "main_cpu_us": (steps_cpu - cpu) / iters * 1e6,
                "gpu_drain_us": (synced - steps_end) / iters * 1e6,
                "saver_drain_us": (end - synced) / iters * 1e6,
                "saver_cpu_us": (saver.cpu_s - saver_cpu) / iters * 1e6,
                "saver_queue_us": (saver.queue_s - saver_queue) / iters * 1e6,
                **gc_meter.since(collected, iters)})
        return (end - start) / iters * 1e6

    run(5)  # warm up: NCCL, kernels, allocator
    plain: list[float] = []
    audited: dict[str, list[float]] = {arm: [] for arm in arms(args)}
    # Each round installs the audit afresh, and its first declared access puts the event
    # hooks in (once per process in an engine): each round's first iteration is timed apart.
    first: dict[str, list[float]] = {"unaudited": [], **{arm: [] for arm in arms(args)}}
    findings: list[str] = []
    launches = 0
    for index in range(args.rounds):
        for arm in in_turn(["unaudited", *audited], index):  # the compiled and Python hooks
            if arm == "unaudited":
                first["unaudited"].append(run(1))
                plain.append(run(args.iters, into="unaudited"))
                continue
            core, _but, group = arm.partition(" but ")
            os.environ["STREAMCHECK_CORE"] = core
            auditor = streamcheck.install("assert")
            if group == COMPILED_DECLARE:  # the auditor's own declare, the Python core's
                vars(auditor).pop("declare", None)
            elif group == COMPILED_LAUNCH_CHECK:  # every checked launch by launch.check
                user_launch._fast_check = None  # (the next install chooses it again)
            elif group == COMPILED_HANDOFF:  # every handoff by _declare_accesses
                user_launch._fast_declare = None  # (the next install chooses it again)
            elif group and group not in PAUSED_ARMS:
                take_out(hook_groups()[group])
            first[arm].append(run(1))  # (the first handoff puts the event hooks in)
            into = "audited" if arm == cores(args)[0] else ""
            with paused_as(group):
                audited[arm].append(run(args.iters, into=into))
            findings += [f.rule_id for f in auditor.findings()]
            launches += auditor.launches
            streamcheck.uninstall()
    os.environ.pop("STREAMCHECK_CORE", None)
    if args.spy_iters:  # for a sampling profiler: the phases apart, by function name, in
        # alternating blocks, in turn first (as the rounds), so a drift of the host hits both
        block = args.spy_iters // args.spy_blocks

        def steps_unaudited() -> None:
            run(block)

        def steps_audited() -> None:
            run(block)

        for index in range(args.spy_blocks):
            for phase in in_turn(["unaudited", "audited"], index):
                if phase == "unaudited":
                    steps_unaudited()
                    continue
                streamcheck.install("assert")
                run(1)  # the first handoff puts the event hooks in: not a step's cost
                steps_audited()
                streamcheck.uninstall()

    census: dict[str, Any] = {}
    if args.gc_census:  # what the young collections find, unaudited and audited, in turn
        for index in range(args.gc_census):
            for arm in in_turn(["unaudited", "audited"], index):
                if arm == "audited":
                    streamcheck.install("assert")
                run(1)
                gc_meter.census, before = collections.Counter(), gc_meter.snapshot()
                run(args.iters)
                found, gc_meter.census = gc_meter.census, None
                young = gc_meter.count[0] - before[0][0]
                entry = census.setdefault(arm, {"young_collections": 0, "iters": 0,
                                                "types": collections.Counter()})
                entry["young_collections"] += young
                entry["iters"] += args.iters
                entry["types"].update(found)
                if arm == "audited":
                    streamcheck.uninstall()
        for entry in census.values():
            runs = max(entry["young_collections"], 1)
            entry["young_per_iter"] = round(entry["young_collections"] / entry["iters"], 3)
            entry["types"] = {name: round(n / runs, 1)
                              for name, n in entry["types"].most_common(15)}

    def audited_vs_not(parts: frozenset[str], mode: str, prepare: Callable[[], int] | None = None
                       ) -> tuple[float, float, list[Any], int]:
        """Over ``args.rounds`` rounds of ``parts``, unaudited and audited in ``mode`` (in turn
        first): the ratio of the medians, the unaudited median (us), every round's finding
        entries, and what ``prepare`` (run after each install, before the timed run) returned
        last."""
        bare, checked, entries, prepared = [], [], [], 0
        for index in range(args.rounds):
            for arm in in_turn(["unaudited", "audited"], index):
                if arm == "unaudited":
                    run(1, parts)  # as the main rounds: each round's first iteration left out
                    bare.append(run(args.iters, parts))
                    continue
                auditor = streamcheck.install(mode)
                run(1, parts)  # the first handoff: the event hooks go in now
                prepared = prepare() if prepare is not None else 0
                checked.append(run(args.iters, parts))
                entries += auditor.entries()
                streamcheck.uninstall()
        return (round(statistics.median(checked) / statistics.median(bare), 4),
                round(statistics.median(bare), 1), entries, prepared)

    ablation: dict[str, float] = {}
    for hook, targets in hook_groups().items() if args.hook_ablate else ():
        restore = functools.partial(take_out, targets)
        # ``record``, not ``assert``: without its event hooks the audit cannot see the
        # connector wait for the step's event, and rightly reports the handoff unsynced
        ratio, _bare, entries, restored = audited_vs_not(frozenset(PARTS), "record", restore)
        ablation[f"audited_but_{hook}"] = ratio
        ablation[f"audited_but_{hook}_restored"] = restored
        ablation[f"audited_but_{hook}_findings"] = sum(e.count for e in entries)
    for left_out in PARTS if args.ablate else ():
        parts = frozenset(PARTS) - {left_out} - ({"handoff"} if left_out == "saver" else set())
        ratio, bare_us, entries, _ = audited_vs_not(parts, "assert")
        findings += [e.finding.rule_id for e in entries]
        ablation[f"without_{left_out}"] = ratio
        ablation[f"without_{left_out}_unaudited_us"] = bare_us
    if args.ablate:
        def clocks_live() -> int:
            """One handoff after each install: the clocks (and the event hooks' work on every
            wait_stream) live without the step's handoff and the connector's checked read,
            which of the two ``without_handoff`` took away."""
            streamcheck.handoff(kv)
            return 0

        ratio, bare_us, entries, _ = audited_vs_not(
            frozenset(PARTS) - {"handoff"}, "assert", clocks_live)
        findings += [e.finding.rule_id for e in entries]
        ablation["without_handoff_clocks_live"] = ratio
        ablation["without_handoff_clocks_live_unaudited_us"] = bare_us
        # the audit's kept state, not its hooks: is that what slows the rest?
        ablation.update(state_ablation(audited_vs_not, findings))
    def phase_table(with_saver: bool) -> dict[str, dict[str, float]]:
        """``--phases``: us per iteration in each part of a step, unaudited and audited."""
        ticks = {"unaudited": Phases(), "audited": Phases()}
        firsts = {"unaudited": Phases(), "audited": Phases()}  # each round's first iteration
        job = saver if with_saver else None
        for index in range(args.rounds):
            for name in in_turn(list(ticks), index):  # as the main rounds: in turn first
                tick = ticks[name]
                # without the thread too, the step's handoff puts the hooks of a declared
                # access (Event.wait's, the host waits') in: only that thread differs
                auditor = streamcheck.install("assert") if name == "audited" else None
                dist.barrier()
                torch.cuda.synchronize()
                x = step_phased(args.layers, x0, w, side, kv, job, firsts[name])
                for _ in range(args.iters):
                    x = step_phased(args.layers, x, w, side, kv, job, tick)
                torch.cuda.synchronize()
                drain()
                if auditor is not None:
                    findings.extend(f.rule_id for f in auditor.findings())
                    streamcheck.uninstall()
        per_iter = args.iters * args.rounds * 1000
        table = {part: {name: round(tick.totals[part] / per_iter, 1)
                        for name, tick in ticks.items()}
                 for part in ticks["unaudited"].totals}
        for part, row in table.items():
            row["added"] = round(row["audited"] - row["unaudited"], 1)
            row["first_added"] = round((firsts["audited"].totals[part]
                                        - firsts["unaudited"].totals[part])
                                       / args.rounds / 1000, 1)
        return table

    phases = ({"with the connector thread": phase_table(True),
               "without it": phase_table(False)} if args.phases else {})
    profile = ""
    if args.profile and rank == 0:
        import cProfile
        import io
        import pstats

        streamcheck.install("assert")
        run(1)  # the first handoff puts the event hooks in: not a step's cost
        prof = cProfile.Profile()
        prof.enable()
        x = x0
        for _ in range(args.iters):
            x = step(args.layers, x, w, side, kv, saver)
        torch.cuda.synchronize()
        prof.disable()
        streamcheck.uninstall()
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(30)
        profile = buf.getvalue()
    elif args.profile:  # the other ranks keep the collectives (and run(1)'s barrier) in step
        streamcheck.install("assert")
        run(1)
        x = x0
        for _ in range(args.iters):
            x = step(args.layers, x, w, side, kv, saver)
        torch.cuda.synchronize()
        streamcheck.uninstall()
    saver.jobs.put(None)
    saver.join()
    dist.destroy_process_group()
    out.put({"rank": rank, "unaudited_us": statistics.median(plain),
             **{f"audited_us_{core}": statistics.median(t) for core, t in audited.items()},
             **{f"paired_ratio_{core}": paired_ratio(t, plain) for core, t in audited.items()},
             "findings": findings,
             "launches_audited": launches, "layers": args.layers, "iters": args.iters,
             "rounds": args.rounds, "ablation": ablation, "phases": phases,
             "first_iteration_us": {name: round(statistics.median(t), 1)
                                    for name, t in first.items()},
             "split": {name: {key: round(statistics.median(r[key] for r in rows), 1)
                              for key in rows[0]} for name, rows in split.items()},
             "gc_census": census, "profile": profile})


TARGET = 1.03  # the loop's audited / unaudited time, at most


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=50)
    # 12: two whole Williams designs of the three arms (unaudited, compiled, python), each
    # arm right after each other as often (_stats.in_turn)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--profile", action="store_true",
                   help="also run one audited round under cProfile on rank 0 and print it")
    p.add_argument("--spy-iters", type=int, default=0,
                   help="then run this many iterations unaudited and audited in functions "
                        "named steps_unaudited / steps_audited (for py-spy)")
    p.add_argument("--spy-blocks", type=int, default=6,
                   help="in this many alternating blocks of each (a drift hits both); "
                        "--spy-iters must be a multiple of it")
    p.add_argument("--hook-ablate", action="store_true",
                   help="also run the audited loop with each group of hooks restored")
    p.add_argument("--phases", action="store_true",
                   help="also time each part of a step, unaudited and audited (assert)")
    p.add_argument("--arm-without", action="append", default=[],
                   choices=["Stream.wait_stream", COMPILED_DECLARE, COMPILED_LAUNCH_CHECK,
                            COMPILED_HANDOFF, PAUSED, PAUSED_TORCH],
                   help="also run, in each round, the compiled hooks without this group of "
                        "hooks, one the audit is as complete without (wait_stream's edge is "
                        "then made by the event hooks; Auditor.declare: the declared "
                        "accesses made by the Python core's declare): what the group saves, "
                        "in the same rounds; 'checks': every hook installed and the audit "
                        "paused, the floor under its cost, and 'checks and current_stream' "
                        "the same with torch's own current_stream()")
    add_core_option(p)
    p.add_argument("--ablate", action="store_true",
                   help="also run the loop with each part left out (audited vs not)")
    p.add_argument("--gc-census", type=int, default=0, metavar="ROUNDS",
                   help="then run this many more rounds (unaudited and audited, in turn) "
                        "taking the young generation's objects by type at every young "
                        "collection: what the audit keeps that makes the collector run")
    args = p.parse_args()
    if (args.iters < 1 or args.rounds < 1 or args.layers < 1 or args.spy_iters < 0
            or args.spy_blocks < 1 or args.gc_census < 0):
        p.error("--iters, --rounds, --layers and --spy-blocks must be at least 1, "
                "--spy-iters and --gc-census at least 0")
    if args.spy_iters % args.spy_blocks:
        p.error(f"--spy-iters ({args.spy_iters}) must be a multiple of --spy-blocks "
                f"({args.spy_blocks}): each phase runs exactly --spy-iters iterations")
    world = min(torch.cuda.device_count(), 2)
    if world < 1:
        print("bench_stream_loop needs a CUDA GPU")
        return 2
    results = run_ranks(rank_main, world, (29631, args), expected=world, timeout=600)
    ok = True
    for r in sorted(results, key=lambda r: r["rank"]):
        for core in arms(args):
            r[f"ratio_{core}"] = round(r[f"audited_us_{core}"] / r["unaudited_us"], 4)
        profile = r.pop("profile")
        phases = r.pop("phases")
        print(json.dumps(r))
        for variant, table in phases.items():
            print(f"rank {r['rank']}, {variant}: us per iteration in each part of a step "
                  "(unaudited, audited, added; and added in each round's first iteration, "
                  "left out of the others), most added first")
            for part, row in sorted(table.items(), key=lambda kv: -kv[1]["added"]):
                print(f"  {part:<24} {row['unaudited']:>9.1f} {row['audited']:>9.1f} "
                      f"{row['added']:>+8.1f} {row['first_added']:>+9.1f}")
        if profile:
            print(profile)
        ok &= not r["findings"] and r["launches_audited"] > 0
    for core in arms(args):
        ratio = max(r[f"ratio_{core}"] for r in results)
        paired = [r[f"paired_ratio_{core}"] for r in sorted(results, key=lambda r: r["rank"])]
        # judged by the interval of the rounds' own ratios (printed below), which can lie
        # under the target while the ratio of the medians, a drift between rounds in it, does not
        verdict = (f"target <= {TARGET}, judged by each round's own ratio: "
                   + target_verdict([(lo, hi) for _m, _least, _most, lo, hi in paired], TARGET)
                   if core.partition(" but ")[2] not in PAUSED_ARMS
                   else "nothing checked: a floor, not judged")
        print(f"stream-heavy TP loop ({world} ranks), {core} hooks: audited/unaudited per "
              f"iteration = {ratio} (the ratio of the medians); {verdict}")
        spread = "; ".join(f"rank {rank}: median {median}, 95 % interval {lo}-{hi}, rounds "
                           f"{least}-{most}"
                           for rank, (median, least, most, lo, hi) in enumerate(paired))
        print(f"  each round's own ratio (audited over the same round's unaudited run): "
              f"{spread}")
    for r in sorted(results, key=lambda r: r["rank"]):
        firsts = ", ".join(f"{name} {us} us" for name, us in r["first_iteration_us"].items())
        print(f"rank {r['rank']}: each round's first iteration (not in the ratios): {firsts}")
    print(f"findings: {'none' if ok else 'PRESENT'}")
    return 0 if ok else 1


@contextlib.contextmanager
def paused_as(group: str) -> Iterator[None]:
    """The block as the arm ``group`` runs it: a paused arm with the audit paused (``PAUSED``),
    and with torch's own ``torch.cuda.current_stream`` back in place of the installed one
    (``PAUSED_TORCH``; ``streams.fast_current_stream`` skips torch's Python frames); any other
    arm as it is."""
    if group not in PAUSED_ARMS:
        yield
        return
    faster = torch.cuda.current_stream
    with audit_paused():
        if group == PAUSED_TORCH:
            torch.cuda.current_stream = installer._registry.original(torch.cuda,
                                                                     "current_stream")
        try:
            yield
        finally:
            torch.cuda.current_stream = faster


def tuple_switch_log(run: Callable[[], Any]) -> Any:
    """``run`` with each new auditor's book keeping its switches in a deque of tuples, which
    the compiled hook then makes (a 7-tuple and three integers a switch) instead of filling the
    compiled log's slots: the slots' saving in place. The installer chooses the log with the
    core (``speedups.use``), so the choice is wrapped for the run."""
    from streamcheck.core import provenance

    choose = speedups._use_core_parts

    def with_tuples() -> None:
        choose()
        provenance.make_switch_log = provenance.deque_log

    speedups._use_core_parts = with_tuples
    try:
        return run()
    finally:
        speedups._use_core_parts = choose
        choose()


def state_ablation(audited_vs_not: Callable[..., tuple[float, float, list[Any], int]],
                   findings: list[str]) -> dict[str, float]:
    """The whole loop audited with less of the audit's state kept: a switch log of 64 entries
    (the stream objects its records hold die young, before the collector's older generations
    take them in), and the collector's generations frozen (``gc.freeze()``, both arms: what
    its passes over every object of the process cost), and the GIL handed between threads
    every :data:`SHORT_GIL_SWITCH_S` instead of CPython's 5 ms (``short_gil_switch``, both
    arms: if the main thread's added time is its waits for the GIL while the connector
    thread's audited calls hold it, a thread waiting for the GIL gets it sooner and the ratio
    moves). First the loop as shipped once more
    (``as_shipped_again``), measured as late in the process as the variants: the control
    they are read against, since the main rounds run first and the ratios drift over a run.
    Each with its unaudited median (us)."""
    from streamcheck.core import provenance

    out: dict[str, float] = {}
    ratio, bare, entries, _ = audited_vs_not(frozenset(PARTS), "assert")
    findings += [e.finding.rule_id for e in entries]
    out["as_shipped_again"], out["as_shipped_again_unaudited_us"] = ratio, bare
    kept = provenance.LOG_LENGTH
    provenance.LOG_LENGTH = 64  # read when each round's auditor makes its book
    try:
        ratio, bare, entries, _ = audited_vs_not(frozenset(PARTS), "assert")
    finally:
        provenance.LOG_LENGTH = kept
    findings += [e.finding.rule_id for e in entries]
    out["short_switch_log"], out["short_switch_log_unaudited_us"] = ratio, bare
    if speedups.active() is not None:  # the compiled hook making tuples, as before its slots
        ratio, bare, entries, _ = tuple_switch_log(
            lambda: audited_vs_not(frozenset(PARTS), "assert"))
        findings += [e.finding.rule_id for e in entries]
        out["tuple_switch_log"], out["tuple_switch_log_unaudited_us"] = ratio, bare
    gc.freeze()
    try:
        ratio, bare, entries, _ = audited_vs_not(frozenset(PARTS), "assert")
    finally:
        gc.unfreeze()
    findings += [e.finding.rule_id for e in entries]
    out["gc_frozen"], out["gc_frozen_unaudited_us"] = ratio, bare
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SHORT_GIL_SWITCH_S)
    try:
        ratio, bare, entries, _ = audited_vs_not(frozenset(PARTS), "assert")
    finally:
        sys.setswitchinterval(interval)
    findings += [e.finding.rule_id for e in entries]
    out["short_gil_switch"], out["short_gil_switch_unaudited_us"] = ratio, bare
    return out


def hook_groups() -> dict[str, list[tuple[Any, tuple[str, ...]]]]:
    """``--hook-ablate``: the audit with one group of its hooks taken out again (the patched
    attributes restored to torch's), to see what each costs inside the loop; ``nothing``, the
    same ``record``-mode audit with every hook in, is the group's baseline. Not a group:
    ``current_stream``, whose restored original builds its stream through the still-hooked
    ``Stream.__new__`` and would cost more than the audit's own."""
    return {
        "nothing": [],
        "set_stream": [(torch.cuda, ("set_stream",)),
                       (getattr(torch, "accelerator", None), ("set_stream",))],
        "Stream.__new__": [(torch.cuda.Stream, ("__new__",))],
        "Event.record": [(torch.cuda.Event, ("record",))],
        "Event.wait": [(torch.cuda.Event, ("wait",))],
        "Stream.wait_stream": [(torch.cuda.Stream, ("wait_stream",))],
        "host_waits": [(torch.cuda, ("synchronize",)),
                       (torch.cuda.Stream, ("synchronize", "query")),
                       (torch.cuda.Event, ("synchronize", "query"))],
        "all_reduce": [(dist, ("all_reduce",)), (dist.distributed_c10d, ("all_reduce",))],
    }


def take_out(targets: list[tuple[Any, tuple[str, ...]]]) -> int:
    """Restore a group of hooks (``hook_groups``) to torch's own; how many were restored."""
    return sum(installer._registry.restore(owner, names)
               for owner, names in targets if owner is not None)


def cores(args: argparse.Namespace) -> list[str]:
    """The hooks compared: compiled (where built) and Python, or the one ``--core`` names
    (one arm fewer a round: more rounds in the same time, for a narrower interval)."""
    return chosen_cores(args.core, "bench_stream_loop")


def arms(args: argparse.Namespace) -> list[str]:
    """The audited runs of each round: each core, and with ``--arm-without GROUP`` the
    compiled core with that group of hooks taken out again (``"compiled but GROUP"``): what the
    group's hooks cost in the same rounds."""
    extra = [f"{cores(args)[0]} but {group}" for group in args.arm_without]
    return [*cores(args), *extra]


if __name__ == "__main__":
    sys.exit(main())
