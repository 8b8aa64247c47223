"""Measure what the audit costs per launch, in one run, on the machine it runs on.

Prints, each a ratio or difference measured here, now:
1. added ns per launch in ``assert`` mode: a communicator method that does nothing, called
   wrapped vs unwrapped (interleaved rounds, median), so the number is the audit alone; for
   ``stream=None`` with torch's ``current_stream()`` as the accessor and with a kept stream's
   (vLLM's kind, tens of ns, where the audit's share is not lost in the accessor's 4-7 us);
2. a real 4 KiB NCCL all-reduce (one-rank communicator, our binding), wrapped vs unwrapped,
   and a decode-like step of 64 of them between matmuls: the ratios a user sees; each with
   ``stream=None`` resolved through torch's ``current_stream()`` (a new stream object each
   call) and through a kept stream's accessor (vLLM's pynccl shape), the thread's default
   stream current or a side stream of its own (the compiled check reads the current
   stream natively once that agreed with torch's read: streamcheck/_native_streams.c);
   then the no-op launch's check between unwrapped all-reduces (caches as a real launch
   leaves them: where the all-reduce's added time goes), and a 4 KiB ``torch.distributed``
   all-reduce, hooked vs not (the engine loop's collective; its hook reads the current stream
   natively too);
3. ``off`` mode: how many attributes are patched (must be 0: the wrapper is not there at all);
4. what each stream hook adds: set_stream, a stream context, event record/wait (clocks idle and
   live), ``wait_stream`` (clocks idle, and live: an engine step's once a connector declared an
   access), stream creation, current_stream(); and a connector's own calls
   (``streamcheck.handoff``, and a declared read ordered by an event) on one thread.
Where the issue set a target (each stream hook <= 300 ns, a launch <= 150 / 200 ns, the 4 KiB
all-reduce <= 1.02, the decode-like step <= 1.01), the rounds' own figures (audited minus, or
over, the same round's unaudited run) give a 95 % interval and the verdict (``_stats.py``):
met only if the whole interval is within the target.
Every measurement runs with the compiled hooks (where built) and again with the Python ones;
``--core compiled`` (or ``python``) times one core only, so the same device time holds twice
the rounds and the intervals narrow; ``--parts`` picks the measurements (``hooks`` 4,
``launches`` 1, ``real`` 2, ``distributed`` the ``torch.distributed`` all-reduce of 2 alone),
so that rounds go where a verdict is still open: the real
operations' rounds are cheap (about a second per 10 rounds) where the hooks' and the no-op
launches' take most of a full run.
Needs a CUDA GPU. ``scripts/bench_stream_loop.py`` measures a whole stream-heavy TP loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from statistics import median
from typing import Any

import torch
from _cores import add_core_option, chosen_cores
from _paused import audit_paused
from _stats import Paired, in_turn, paired_added, paired_ratio, target_verdict

import streamcheck
from streamcheck import installer
from streamcheck.wrappers.sites import LaunchSite

#: What ``--parts`` can pick: the stream hooks (4), the no-op launches (1), the real
#: operations (2; ``real`` takes in ``distributed``, the ``torch.distributed`` all-reduce alone).
PARTS = ("hooks", "launches", "real", "distributed")


class NoOpComm:
    """A communicator whose launch does nothing: what remains is the wrapper's cost."""

    def __init__(self, device: int) -> None:
        self.device = torch.device("cuda", device)
        self._current_stream = torch.cuda.current_stream

    def all_reduce(self, tensor: Any, out: Any = None, op: str = "sum", stream: Any = None) -> Any:
        if stream is None:  # as pynccl and our binding do: the accessor's cost is the callee's
            stream = self._current_stream()
        return out


class CachedNoOpComm:
    """The same, with vLLM's kind of accessor: a stream read once and kept (its
    ``current_stream()``), not torch's 4-7 us ``torch.cuda.current_stream()``, so what the
    audit adds to a ``stream=None`` launch is not lost in the accessor's own time."""

    def __init__(self, device: int, kept: Any = None) -> None:
        self.device = torch.device("cuda", device)
        kept = torch.cuda.current_stream(device) if kept is None else kept
        self._current_stream = lambda: kept

    all_reduce = NoOpComm.all_reduce  # its own attribute: wrapped apart from NoOpComm's


# The two no-op communicators as launch sites, instrumented after each install.
NOOP_SITE = LaunchSite("bench.noop", __name__, "NoOpComm", ("all_reduce",),
                       stream="self._current_stream()")
CACHED_SITE = LaunchSite("bench.noop.cached", __name__, "CachedNoOpComm", ("all_reduce",),
                         stream="self._current_stream()")

# The targets, ns added: each stream hook, and a collective launch by how its stream is
# given (a kept stream's accessor is what vLLM's stream=None launches go through).
HOOK_TARGETS = {"set_stream": 300, "wait_stream (a new event each)": 300,
                "wait_stream, clocks live": 300, "torch.cuda.Stream()": 300,
                "current_stream taken before the audit": 300}
LAUNCH_TARGETS = {"explicit stream": 150, "stream=None": 200,
                  "stream=None, a kept stream's accessor": 200,
                  "stream=None, a kept side stream's accessor": 200}


def per_call_ns(fn: Any, calls: int, drain: Any = None) -> float:
    """ns per call; ``drain`` (e.g. a device synchronize) ends the round inside the timing, so
    GPU work a round queued is paid by that round, not by the next one."""
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    if drain is not None:
        drain()
    return (time.perf_counter_ns() - start) / calls


def interleaved_arms(arms: list[tuple[Any, Any]], calls: int, rounds: int, drain: Any = None
                     ) -> list[list[float]]:
    """ns per call of each arm ``(fn, context)`` in each round, the arms in turn
    (``in_turn``); ``context()`` is entered around the arm's timed run, outside its timing."""
    times: list[list[float]] = [[] for _ in arms]
    for index in range(rounds):
        for (fn, context), out in in_turn(list(zip(arms, times, strict=True)), index):
            with context():
                out.append(per_call_ns(fn, calls, drain))
    return times


def toggled(fn: Any, calls: int, rounds: int) -> tuple[list[float], list[float]]:
    """ns per call of ``fn`` without the audit and with it (``assert``) in each round, the
    rounds alternating, which goes first turning from round to round: the same callable, so
    what differs is the hooks alone."""
    off, on = [], []
    streamcheck.uninstall()
    for index in range(rounds):
        for audited in in_turn([False, True], index):
            if audited:
                streamcheck.install("assert")
                on.append(per_call_ns(fn, calls))
                streamcheck.uninstall()
            else:
                off.append(per_call_ns(fn, calls))
    return off, on


def judged(label: str, paired: Paired, target: float) -> dict[str, Any]:
    """The rows that say what a paired measurement shows against its target: the 95 %
    interval of the rounds' own figures and the verdict it gives (``_stats``)."""
    _median, _least, _most, lo, hi = paired
    return {f"{label}, 95 % interval": f"{lo}-{hi}",
            f"{label}: target <= {target}": target_verdict([(lo, hi)], target)}


def ratio_rows(label: str, bare: list[float], wrapped: list[float], digits: int,
               target: float) -> dict[str, Any]:
    """A real operation timed bare and audited (ns a call, each round): the medians in us,
    their ratio, and the target judged by the interval of each round's own ratio."""
    return {f"{label} unwrapped us": round(median(bare) / 1000, digits),
            f"{label} assert-mode us": round(median(wrapped) / 1000, digits),
            f"{label} ratio wrapped/unwrapped": round(median(wrapped) / median(bare), 4),
            **judged(f"{label}, each round's own ratio", paired_ratio(wrapped, bare), target)}


def floor_rows(label: str, bare: list[float], floor: list[float], digits: int
               ) -> dict[str, Any]:
    """The same operation through the installed wrapper with the audit paused
    (``audit_paused``), in the same rounds: its median and each round's own ratio over the
    bare call, with the 95 % interval of that ratio's median."""
    ratio, _least, _most, lo, hi = paired_ratio(floor, bare)
    return {f"{label} wrapper, audit paused, us": round(median(floor) / 1000, digits),
            f"{label} wrapper, audit paused: each round's own ratio": ratio,
            f"{label} wrapper, audit paused: 95 % interval": f"{lo}-{hi}"}


def hook_costs(calls: int, rounds: int) -> dict[str, float]:
    """ns each stream hook adds: set_stream, a stream context, event record/wait (clocks idle,
    then live after a handoff), ``wait_stream`` (torch records a new event in each: its first
    record), stream creation, current_stream()."""
    s0, s1 = torch.cuda.current_stream(), torch.cuda.Stream()
    torch_current_stream = torch.cuda.current_stream
    if streamcheck.current_auditor() is not None:
        raise RuntimeError("hook_costs takes torch's current_stream before any audit starts")
    ev = torch.cuda.Event()
    probe = torch.empty(4, device="cuda")

    def switch() -> None:
        torch.cuda.set_stream(s1)
        torch.cuda.set_stream(s0)

    def context() -> None:
        with torch.cuda.stream(s1):
            pass

    def record_wait() -> None:
        ev.record()
        s1.wait_event(ev)

    out: dict[str, float] = {}
    for name, fn, per in (("set_stream", switch, 2), ("stream context (enter+exit)", context, 1),
                          ("event record+wait, clocks idle", record_wait, 1),
                          ("wait_stream (a new event each)", lambda: s1.wait_stream(s0), 1),
                          ("torch.cuda.Stream()", lambda: torch.cuda.Stream(), 1),
                          # looked up at each call, as a stream context does: the audit's
                          # own current_stream then
                          ("torch.cuda.current_stream()", lambda: torch.cuda.current_stream(),
                           1),
                          # torch's, taken before the audit started (``from torch.cuda import
                          # current_stream`` at import): its Stream() goes through the
                          # creation hook on Stream.__new__
                          ("current_stream taken before the audit", torch_current_stream, 1)):
        n = calls // 10 if name == "torch.cuda.Stream()" else calls
        off, on = toggled(fn, n, rounds)
        out[f"hook {name}: added ns"] = round((median(on) - median(off)) / per, 1)
        out[f"hook {name}: unaudited ns"] = round(median(off) / per, 1)
        if name in HOOK_TARGETS:
            out.update(judged(f"hook {name}: added ns", paired_added(on, off, per),
                              HOOK_TARGETS[name]))

    def record_wait_live() -> None:
        auditor = streamcheck.current_auditor()
        if auditor is not None and not auditor.ordering:
            streamcheck.handoff(probe)  # one mark: from now on the clocks order events
        record_wait()

    off, on = toggled(record_wait_live, calls, rounds)
    out["hook event record+wait, clocks live: added ns"] = round(median(on) - median(off), 1)

    def wait_stream_live() -> None:
        """As an engine step's ``wait_stream`` once a connector declared an access: the new
        event's record keeps its snapshot, and the wait compares it with the stream's clock."""
        auditor = streamcheck.current_auditor()
        if auditor is not None and not auditor.ordering:
            streamcheck.handoff(probe)
        s1.wait_stream(s0)

    name = "wait_stream, clocks live"
    off, on = toggled(wait_stream_live, calls, rounds)
    out[f"hook {name}: added ns"] = round(median(on) - median(off), 1)
    out[f"hook {name}: unaudited ns"] = round(median(off), 1)
    out.update(judged(f"hook {name}: added ns", paired_added(on, off, 1), HOOK_TARGETS[name]))

    declare, declared_read = connector_calls(probe, ev, s1)
    for name, fn in (("streamcheck.handoff", declare),
                     ("handoff + event + launch(reads=...)", declared_read)):
        off, on = toggled(fn, calls // 10, rounds)
        out[f"connector {name}: added ns"] = round(median(on) - median(off), 1)
    torch.cuda.synchronize()
    return out


def connector_calls(probe: Any, ev: Any, side: Any) -> tuple[Any, Any]:
    """A connector's own calls, one thread: declaring a step's KV (``probe``), and the audited
    launch on ``side`` that reads it, ordered by ``ev`` as a correct connector orders it.
    Unaudited, both return at once."""

    def declare() -> None:
        streamcheck.handoff(probe)

    def declared_read() -> None:
        made = streamcheck.handoff(probe)
        ev.record()
        side.wait_event(ev)
        with streamcheck.launch("bench.kv.load", stream=side, device=0,
                                reads=[made] if made is not None else []):
            pass

    return declare, declared_read


def profile_connector(calls: int) -> str:
    """``--profile-connector``: the declared read above under cProfile, audited with the
    compiled hooks where built: which functions its time goes to on this machine."""
    import cProfile
    import io
    import pstats

    _declare, declared_read = connector_calls(torch.empty(4, device="cuda"),
                                              torch.cuda.Event(), torch.cuda.Stream())
    streamcheck.install("assert")
    try:
        for _ in range(100):  # the first handoff puts the event hooks in
            declared_read()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            declared_read()
        prof.disable()
    finally:
        streamcheck.uninstall()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    return buf.getvalue()


def measure(args: argparse.Namespace, x: Any, out: Any, s: Any) -> dict[str, Any]:
    """Hook costs, the audit alone per launch, a real 4 KiB all-reduce and a decode-like step,
    with the hooks ``STREAMCHECK_CORE`` chooses."""
    results: dict[str, Any] = {}
    if "hooks" in args.parts:
        results.update(hook_costs(args.calls, args.rounds))
    side = torch.cuda.Stream()
    if "launches" in args.parts:
        results.update(noop_launches(args, x, out, s, side))
    if "real" in args.parts:
        results.update(real_operations(args, x, out, side))
    if "real" in args.parts or "distributed" in args.parts:
        results.update(torch_distributed_ratio(args, x))
    return results


def noop_launches(args: argparse.Namespace, x: Any, out: Any, s: Any, side: Any
                  ) -> dict[str, Any]:
    """The audit alone per launch: a communicator method that does nothing, wrapped vs not."""
    results: dict[str, Any] = {}
    # 1. the audit alone
    # an engine whose steps run on a stream of their own: that stream current, kept by the
    # accessor (the compiled check reads the current stream natively from its first launch:
    # proven there on a made-up stream, streamcheck/_native_streams.c)
    noop, cached, cached_side = NoOpComm(0), CachedNoOpComm(0), CachedNoOpComm(0, side)
    plain = NoOpComm.all_reduce  # both classes' method, before either is wrapped
    streamcheck.install("assert")
    installer.instrument(NOOP_SITE)
    installer.instrument(CACHED_SITE)
    for label, comm, kwargs, current in (
            ("explicit stream", noop, {"stream": s}, None),
            ("stream=None", noop, {}, None),
            ("stream=None, a kept stream's accessor", cached, {}, None),
            ("stream=None, a kept side stream's accessor", cached_side, {}, side)):
        audited = type(comm).all_reduce
        if plain is audited:
            raise RuntimeError(f"{label}: the launch was not wrapped")
        with torch.cuda.stream(current):  # None: a no-op, the thread's own stream
            unwrapped, wrapped, floor = interleaved_arms(
                [(lambda c=comm, f=plain, kw=kwargs: f(c, x, out, **kw),
                  contextlib.nullcontext),
                 (lambda c=comm, f=audited, kw=kwargs: f(c, x, out, **kw),
                  contextlib.nullcontext),
                 (lambda c=comm, f=audited, kw=kwargs: f(c, x, out, **kw), audit_paused)],
                args.calls, args.rounds)
        results[f"noop {label}: unwrapped ns"] = round(median(unwrapped), 1)
        results[f"noop {label}: assert-mode ns"] = round(median(wrapped), 1)
        results[f"noop {label}: added ns per launch"] = round(
            median(wrapped) - median(unwrapped), 1)
        results.update(judged(f"noop {label}: added ns per launch",
                              paired_added(wrapped, unwrapped), LAUNCH_TARGETS[label]))
        added, _least, _most, lo, hi = paired_added(floor, unwrapped)
        results[f"noop {label}: wrapper, audit paused: added ns"] = added
        results[f"noop {label}: wrapper, audit paused: 95 % interval"] = f"{lo}-{hi}"
    streamcheck.uninstall()
    return results


def real_operations(args: argparse.Namespace, x: Any, out: Any, side: Any) -> dict[str, Any]:
    """The real collectives and a decode-like step, hooked vs not."""
    results: dict[str, Any] = {}
    # 2. a real NCCL all-reduce, and 4. a decode-like step, each through torch's accessor and
    # through a kept stream's (vLLM's pynccl resolves stream=None through one: its
    # current_stream() keeps the thread's stream, where torch's makes a new object each call)
    from streamcheck.runtime.nccl import NcclCommunicator, unique_id

    comm = NcclCommunicator(1, 0, unique_id(), 0)
    kept = torch.cuda.current_stream()
    for suffix, accessor, current in (("", None, None),
                                      (", a kept stream's accessor", lambda: kept, None),
                                      (", a kept side stream's accessor", lambda: side, side)):
        if accessor is not None:
            comm._current_stream = accessor
        with torch.cuda.stream(current):  # None: a no-op, the thread's own stream
            results.update(nccl_ratios(args, comm, x, out, suffix))
    plain = NoOpComm.all_reduce  # unwrapped: the install of section 1 was undone
    results.update(beside_all_reduce(args, comm, CachedNoOpComm(0, side), side, plain, x, out))
    comm.close()
    return results


def beside_all_reduce(args: argparse.Namespace, comm: Any, noop: Any, side: Any, plain: Any,
                      x: Any, out: Any) -> dict[str, Any]:
    """Where a real all-reduce's added time goes: the no-op launch's check (a kept side
    stream's accessor, that stream current) timed between unwrapped all-reduces, so the
    caches are as the all-reduce leaves them, where the tight loop of section 1 has them
    warm. Each arm runs an unwrapped all-reduce and then the no-op launch, wrapped or not."""
    from streamcheck.runtime.nccl import NcclCommunicator

    bare_nccl = NcclCommunicator.all_reduce  # before the install wraps it
    streamcheck.install("assert")
    installer.instrument(CACHED_SITE)
    audited = type(noop).all_reduce

    def beside(launch: Any) -> Any:
        def run() -> None:
            bare_nccl(comm, x, out)
            launch(noop, x, out)
        return run

    comm._current_stream = lambda: side
    with torch.cuda.stream(side):
        bare, wrapped = interleaved_arms(
            [(beside(plain), contextlib.nullcontext), (beside(audited), contextlib.nullcontext)],
            args.calls // 10, args.rounds, drain=torch.cuda.synchronize)
    auditor = streamcheck.current_auditor()
    findings = len(auditor.findings()) if auditor else None
    streamcheck.uninstall()
    label = "noop launch beside a real all-reduce, a kept side stream's accessor"
    added, _least, _most, lo, hi = paired_added(wrapped, bare)
    return {f"{label}: unwrapped pair us": round(median(bare) / 1000, 3),
            f"{label}: added ns per launch": added,
            f"{label}: 95 % interval": f"{lo}-{hi}",
            f"{label}: findings": findings}


def torch_distributed_ratio(args: argparse.Namespace, x: Any) -> dict[str, Any]:
    """A 4 KiB ``torch.distributed`` all-reduce (one rank, NCCL), hooked (the collective
    hook, its current stream read natively once proven) vs not, the default stream current:
    the engine loop's collective (``bench_stream_loop.py``)."""
    import socket

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        return {"torch.distributed 4KiB all_reduce": "not available in this build"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", world_size=1,
                            rank=0, device_id=torch.device("cuda", 0))
    try:
        bare = dist.all_reduce  # before the install hooks it
        streamcheck.install("assert")
        hooked = dist.all_reduce
        if hooked is bare:
            raise RuntimeError("torch.distributed.all_reduce was not hooked")
        for _ in range(2000):
            bare(x)
            hooked(x)
        torch.cuda.synchronize()
        plain = contextlib.nullcontext
        unwrapped, wrapped, floor = interleaved_arms(
            [(lambda: bare(x), plain), (lambda: hooked(x), plain),
             (lambda: hooked(x), audit_paused)],
            args.calls // 10, args.rounds, drain=torch.cuda.synchronize)
        auditor = streamcheck.current_auditor()
        launches = auditor.coverage.launches_by_op() if auditor else {}
        findings = len(auditor.findings()) if auditor else None
        streamcheck.uninstall()
    finally:
        dist.destroy_process_group()
    label = "torch.distributed 4KiB all_reduce"
    return {**ratio_rows(label, unwrapped, wrapped, 3, 1.02),
            **floor_rows(label, unwrapped, floor, 3),
            f"{label}: launches counted": sum(n for op, n in launches.items()
                                               if "all_reduce" in op),
            f"{label}: findings": findings}


def nccl_ratios(args: argparse.Namespace, comm: Any, x: Any, out: Any, suffix: str
                ) -> dict[str, Any]:
    """A real 4 KiB all-reduce (one-rank communicator, our binding) and a decode-like TP step
    (32 layers x (2 matmuls + 2 all-reduces), batch 8, hidden 4096), wrapped vs unwrapped,
    ``stream=None`` resolved through ``comm``'s accessor."""
    from streamcheck.runtime.nccl import NcclCommunicator

    results: dict[str, Any] = {}
    unwrapped_nccl = NcclCommunicator.all_reduce
    streamcheck.install("assert")
    wrapped_nccl = NcclCommunicator.all_reduce

    def bare_nccl() -> None:
        unwrapped_nccl(comm, x, out)

    def audited_nccl() -> None:
        wrapped_nccl(comm, x, out)

    for _ in range(2000):
        bare_nccl()
        audited_nccl()
    torch.cuda.synchronize()
    plain = contextlib.nullcontext
    bare, wrapped, floor = interleaved_arms(
        [(bare_nccl, plain), (audited_nccl, plain), (audited_nccl, audit_paused)],
        args.calls // 10, args.rounds, drain=torch.cuda.synchronize)
    torch.cuda.synchronize()
    auditor = streamcheck.current_auditor()
    results.update(ratio_rows(f"nccl 4KiB all_reduce{suffix}", bare, wrapped, 3, 1.02))
    results.update(floor_rows(f"nccl 4KiB all_reduce{suffix}", bare, floor, 3))
    results[f"findings during bench{suffix}"] = len(auditor.findings()) if auditor else None
    streamcheck.uninstall()

    hidden, layers = 4096, 32
    weights = [torch.randn(hidden, hidden, device="cuda", dtype=torch.bfloat16) / 64
               for _ in range(2)]
    h0 = torch.randn(8, hidden, device="cuda", dtype=torch.bfloat16)

    def step(all_reduce: Any) -> None:
        h = h0
        for _ in range(layers):
            for wt in weights:
                h = h @ wt
                all_reduce(comm, h, h)
        torch.cuda.synchronize()

    streamcheck.install("assert")
    audited_step = NcclCommunicator.all_reduce
    for _ in range(5):
        step(unwrapped_nccl)
        step(audited_step)
    bare, wrapped, floor = interleaved_arms(
        [(lambda: step(unwrapped_nccl), plain), (lambda: step(audited_step), plain),
         (lambda: step(audited_step), audit_paused)], 20, args.rounds)
    streamcheck.uninstall()
    label = f"decode-like step (64 all-reduces){suffix}"
    results.update(ratio_rows(label, bare, wrapped, 1, 1.01))
    results.update(floor_rows(label, bare, floor, 1))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    # 18: three whole Williams designs of the real operations' three arms (_stats.in_turn)
    parser.add_argument("--rounds", type=int, default=18)
    parser.add_argument("--profile-connector", type=int, default=0, metavar="CALLS",
                        help="also run a connector's declared read CALLS times under cProfile "
                             "and print where its time goes")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="the measurements to make (default: all)")
    add_core_option(parser)
    args = parser.parse_args()
    if args.calls < 10 or args.rounds < 1 or args.profile_connector < 0:
        parser.error("--calls must be at least 10, --rounds at least 1, "
                     "--profile-connector at least 0")
    cores = chosen_cores(args.core, "bench_audit")  # before any timing: a core not built stops
    if not torch.cuda.is_available():
        print("bench_audit needs a CUDA GPU; none is visible here")
        return 2
    torch.cuda.set_device(0)
    x = torch.ones(1024, device="cuda")  # 4 KiB of float32
    out = torch.empty_like(x)
    s = torch.cuda.current_stream()
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}

    # 3. off: nothing installed
    streamcheck.install("off")
    results["off_patched_attributes"] = installer.installed_patches()

    from streamcheck.wrappers import speedups

    results["hooks compared"] = ", ".join(cores)
    for core in cores:  # the same measurements with the compiled hooks and the Python ones
        os.environ["STREAMCHECK_CORE"] = core
        results.update({f"[{core}] {k}": v for k, v in measure(args, x, out, s).items()})
    os.environ.pop("STREAMCHECK_CORE", None)
    if speedups.built():  # what the compiled hooks read with (the last run may be Python's)
        from streamcheck import _speedups

        found, proven, answered, off = _speedups.native_raw_streams_state()
        results["native current-stream reads"] = (
            f"found {found}, proven {proven}, devices answered {answered:#x}, turned off {off}")

    # reference costs of the reads the audit makes, and of candidates for them
    reader = torch._C._cuda_getCurrentStream
    results["torch._C._cuda_getCurrentStream ns"] = round(per_call_ns(lambda: reader(0), 200000), 1)
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        results["torch._C._cuda_getCurrentRawStream ns"] = round(
            per_call_ns(lambda: raw(0), 200000), 1)
    results["stream.stream_id ns"] = round(per_call_ns(lambda: s.stream_id, 200000), 1)
    results["stream.device_index ns"] = round(per_call_ns(lambda: s.device_index, 200000), 1)
    results["empty lambda ns"] = round(per_call_ns(lambda: None, 200000), 1)
    results["torch.cuda.current_stream() ns"] = round(
        per_call_ns(torch.cuda.current_stream, 200000), 1)
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(results))
    if args.profile_connector:
        print(profile_connector(args.profile_connector))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
