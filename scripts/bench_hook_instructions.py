"""Count the CPU instructions each compiled hook adds per call, on any machine with valgrind.

The timing benches (``bench_audit.py``, ``bench_stream_loop.py``) need an H200 host, and their
nanoseconds move between hosts by more than a change to a hook does. An instruction count does
not: callgrind counts what the CPU executes, the same on every run (``PYTHONHASHSEED`` fixed).
Each path runs in its own process under callgrind twice, with few and with many calls, audited
and not, counting only inside the loop that makes the calls (``operator.countOf`` drives it,
which nothing else in the process calls); (many - few) / (the calls between) is one call's
count, the collector's share of the loop included, and audited minus unaudited is what the
audit adds. The hooks are installed as the audit installs them, on objects shaped
like torch's (a communicator on device 0 with a kept stream, a module whose ``all_reduce``
takes a tensor as ``torch.distributed``'s does, streams with ``device_index``, ``stream_id``
and ``cuda_stream``), with C callables where torch's are C (the current-stream read); no GPU
and no torch are needed. Instructions are not nanoseconds (a cache miss costs
hundreds of cycles and shows as one instruction), so this ranks and tracks the hooks' own work
between the timed runs; it replaces none of them.

    python scripts/bench_hook_instructions.py [--few 2000] [--many 12000] [--paths ...] [--json]
    python scripts/bench_hook_instructions.py --cold [--few 20] [--many 120] [--paths ...]

``--cold`` counts what a call costs where an engine makes it, after other work evicted the
hook's code and data: each call comes after a sweep of a buffer four times the first-level
caches (outside the counted window), and callgrind's cache simulation (``--cache-sim=yes``)
counts the first-level misses inside the call: the cache lines of code (I1) and of data (D1,
read and written) a cold call touches, each a trip to a farther cache on a real CPU. In an
engine's step a declared access after the step's torch work costs several times its
tight-loop time (docs/measurements.md, P17): these lines are that cost's cause, which an
instruction count does not see.

Needs ``valgrind`` on PATH and the compiled hooks built (``scripts/build_speedups.sh``).
"""

from __future__ import annotations

import argparse
import functools
import importlib.machinery
import json
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PATHS = {
    "collective launch, explicit stream": "explicit",
    "collective launch, stream=None through a kept stream": "kept",
    # torch's kind of accessor makes a new stream object at each call
    "collective launch, stream=None through torch's kind of accessor": "fresh",
    "collective launch, stream=None through torch's kind, the default stream": "fresh_default",
    # torch.distributed's kind of collective: a module function (the stream-heavy loop's
    # collective); from the main engine thread, whose stream the one rule there spares (not
    # read), and from a helper, whose stream is read on the tensor's device
    "torch.distributed all_reduce, the main engine thread's": "distributed",
    "torch.distributed all_reduce, a helper's, its stream read": "distributed_helper",
    "set_stream": "set_stream",
    "Stream() creation": "creation",
    # torch's current_stream() wraps the thread's stream: Stream(stream_id=..., ...), no record
    "Stream(stream_id=...), a wrap as current_stream() makes": "wrap",
    "wait_stream's record and wait, clocks live": "wait_stream",
    "Stream.wait_stream hooked whole, clocks live": "stream_wait",
    "Stream.wait_stream through its event's hooks, clocks live": "stream_wait_events",
    "streamcheck.handoff, clocks live": "handoff",
    "streamcheck.handoff, clocks live, through torch's own current-stream read": "handoff_torch",
    "streamcheck.handoff, Python's declare": "handoff_py",
    "connector launch reading a handoff, clocks live": "launch_read",
    "connector launch reading a handoff, Python's declare": "launch_read_py",
    "a handoff on a stream, then its synchronize, clocks live": "host_wait",
    "a handoff on a stream, then its synchronize, Python's hook": "host_wait_py",
    "a handoff, an event on its stream, then its synchronize, clocks live": "event_sync",
    "a handoff, an event on its stream, then its synchronize, Python's hook": "event_sync_py",
    "a handoff, an event on its stream, waited on by another": "event_wait",
    "a handoff, an event on its stream, waited on by another, Python's hooks": "event_wait_py",
}
#: The engine threads ``distributed_helper`` declared, and what ends them (for a caller that
#: goes on after the count: the test, which takes the roles back).
ENGINES: list[threading.Thread] = []
ENGINE_STOP = threading.Event()
#: The paths that declare accesses (a "_py" one keeps the auditor's declare in Python).
DECLARING = ("handoff", "handoff_py", "handoff_torch", "launch_read", "launch_read_py")
EVENTS = re.compile(r"^events:\s*(.+)$", re.MULTILINE)
SUMMARY = re.compile(r"^summary:\s*(.+)$", re.MULTILINE)
SWEEP_BYTES = 4 * 32 * 1024  # four times a 32 KiB first-level cache: every line of it evicted


class KeptStream:
    """A torch-shaped stream: the attributes the hooks read."""

    __slots__ = ("__weakref__", "cuda_stream", "device_index", "stream_id")

    def __init__(self, handle: int, device: int, stream_id: int) -> None:
        self.cuda_stream, self.device_index, self.stream_id = handle, device, stream_id

    # torch.cuda.Stream's own three, as torch writes them (the stream_wait path hooks the first)
    def wait_stream(self, stream: KeptStream) -> None:
        self.wait_event(stream.record_event())

    def record_event(self, event: Any = None) -> Any:
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event: Any) -> None:
        event.wait(self)

    def synchronize(self) -> None:  # torch's waits for the device; a no-op here
        pass

    def query(self) -> bool:
        return True


SIDE = KeptStream(0x7F05, 0, 5)
KEPT = KeptStream(0x7F03, 0, 3)
CURRENT_RAW = {0: KEPT.cuda_stream}.__getitem__  # torch's read is C too
CURRENT = {0: (KEPT.stream_id, 0, 1)}.__getitem__
DEFAULT = KeptStream(0, 0, 0)  # the device's default stream (handle 0, id 0)
DEFAULT_RAW = {0: DEFAULT.cuda_stream}.__getitem__  # the readers while it is current
DEFAULT_CURRENT = {0: (DEFAULT.stream_id, 0, 1)}.__getitem__


class KVTensor:
    """A torch-shaped tensor: ``get_device`` and ``data_ptr``, C callables as torch's are."""

    __slots__ = ("data_ptr", "get_device")

    def __init__(self, device: int, pointer: int) -> None:
        self.get_device, self.data_ptr = device.__index__, pointer.__index__


KV = KVTensor(0, 0x7F10_0000)


class Communicator:
    """vLLM's shape: ``stream=None`` resolves through an accessor that keeps its stream."""

    def __init__(self) -> None:
        self.device = 0

    def current_stream(self) -> KeptStream:
        return KEPT

    def all_reduce(self, tensor: Any, out: Any = None, stream: Any = None) -> Any:
        if stream is None:
            stream = self.current_stream()
        return out


class FreshCommunicator(Communicator):
    """torch's shape of accessor: ``torch.cuda.current_stream()`` makes a new stream object
    for the thread's current stream at every call."""

    current = KEPT

    def current_stream(self) -> KeptStream:
        kept = self.current
        return KeptStream(kept.cuda_stream, kept.device_index, kept.stream_id)

    all_reduce = Communicator.all_reduce  # its own attribute: wrapped apart from Communicator's



class MadeStream:
    """``torch.cuda.Stream``'s shape: its own ``__new__`` takes a device and a priority."""

    made = 0

    def __new__(cls, device: Any = None, priority: int = 0, **kwargs: Any) -> MadeStream:
        stream = object.__new__(cls)
        cls.made += 1
        stream.device_index, stream.stream_id = 0, cls.made % 32
        stream.cuda_stream = 0x7F00 + stream.stream_id
        return stream


class Event:
    """``torch.cuda.Event``'s shape: ``wait_stream`` makes a new one, records it on the
    stream waited for and waits on it on the waiting one (torch's own methods, no-ops here)."""

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


def wait_stream(waiting: KeptStream, waited: KeptStream) -> None:
    """torch's ``Stream.wait_stream``: ``waiting.wait_event(waited.record_event())``."""
    event = Event()
    event.record(waited)
    event.wait(waiting)


def _set_stream(stream: Any) -> None:
    """The namespace's own ``set_stream`` (a no-op here)."""


def _synchronize(device: Any = None) -> None:
    """The namespace's own ``synchronize`` (a no-op here)."""


class Namespace:
    set_stream = staticmethod(_set_stream)
    synchronize = staticmethod(_synchronize)


def _all_reduce(tensor: Any, op: Any = None, group: Any = None, async_op: bool = False) -> None:
    """``torch.distributed.all_reduce``'s shape (a no-op here)."""


def _exception_logger(func: Any) -> Any:
    """torch's wrapper of most of its collectives (``distributed_c10d._exception_logger``):
    ``(*args, **kwargs)``, the function behind it as ``__wrapped__``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception:
            raise

    return wrapper


#: ``torch.distributed``'s shape: its collectives are a module's functions, behind torch's
#: logging wrapper.
Distributed = types.ModuleType("bench_distributed")
Distributed.all_reduce = _exception_logger(_all_reduce)  # type: ignore[attr-defined]


def stand_in_torch() -> None:
    """``torch`` and ``torch._C`` as modules holding only torch's C read of the current stream
    (``_cuda_getCurrentStream``), which the audit calls where no reader is installed; put in
    after the audit is installed (its torch hooks need the rest of torch). For the counting
    child, which keeps torch out; a process with torch restores ``sys.modules`` itself."""
    torch, torch_c = types.ModuleType("torch"), types.ModuleType("torch._C")
    for module in (torch, torch_c):  # imported, as importlib leaves a module's spec
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
        module.__spec__._initializing = False  # type: ignore[attr-defined]
    torch_c._cuda_getCurrentStream = CURRENT  # type: ignore[attr-defined]
    torch._C = torch_c  # type: ignore[attr-defined]
    sys.modules.update({"torch": torch, "torch._C": torch_c})


def prepare(path: str, audited: bool) -> Any:
    """The call to count, with the path's hook installed when ``audited``."""
    import streamcheck
    from streamcheck import installer
    from streamcheck.runtime.reader import StreamReader
    from streamcheck.wrappers.events import hook_event_record, hook_event_wait, hook_wait_stream
    from streamcheck.wrappers.launches import wrap_stream_method
    from streamcheck.wrappers.streams import DeviceHome, hook_set_stream, hook_stream_creation

    comm, namespace = Communicator(), Namespace()
    if path.startswith("fresh"):
        comm = FreshCommunicator()
        if path == "fresh_default":
            comm.current = DEFAULT
    if audited:
        installer.install("assert")
        registry, gate = installer._registry, installer._gate
        if path in ("explicit", "kept", "fresh", "fresh_default"):
            default = path == "fresh_default"
            wrap_stream_method(registry, gate, type(comm), "all_reduce", "bench.all_reduce",
                               resolve="self.current_stream()", device_expr="self.device",
                               accessor="",
                               current_of_device=DEFAULT_CURRENT if default else CURRENT,
                               current_raw_stream=DEFAULT_RAW if default else CURRENT_RAW,
                               fixed_device=True)
        elif path == "set_stream":
            hook_set_stream(registry, gate, namespace, "bench")
        elif path in ("distributed", "distributed_helper"):
            from streamcheck.wrappers.torch_distributed import wrap_tensor_function

            wrap_tensor_function(registry, gate, Distributed, "all_reduce",
                                 "bench.dist.all_reduce", CURRENT)
            if path == "distributed_helper":  # another thread the engine: this one a helper
                engine = threading.Thread(target=ENGINE_STOP.wait, daemon=True)
                engine.start()
                streamcheck.declare_thread_role(streamcheck.ENGINE, engine.ident)
                ENGINES.append(engine)
        elif path in ("wait_stream", "stream_wait", "stream_wait_events"):
            reader = StreamReader(current_stream=CURRENT, current_device=int)
            hook_event_record(registry, gate, Event, reader)
            hook_event_wait(registry, gate, Event, reader)
            if path == "stream_wait":
                hook_wait_stream(registry, gate, KeptStream, reader)
            auditor = installer.current_auditor()
            auditor.ordering = True  # as after a connector's first declared access
            # the common wait: the waiting stream's clock already holds the waited one's
            kept, side = (0, KEPT.stream_id), (0, SIDE.stream_id)
            auditor.clocks._clocks.update({kept: {kept: 2}, side: {kept: 2, side: 1}})
        elif path in DECLARING:
            from streamcheck.runtime import cuda

            cuda.use_reader(StreamReader(current_stream=CURRENT, current_device=int))
            auditor = installer.current_auditor()
            if path.endswith("_py"):  # the class's own declare, as the Python core has it
                vars(auditor).pop("declare", None)
            streamcheck.handoff(KV)  # the first declared access: the clocks go live
            # the connector's stream has waited for the engine's: its reads are ordered
            auditor.clocks._clocks[(0, SIDE.stream_id)] = {(0, KEPT.stream_id): 1 << 40}
            if path == "handoff_torch":  # no reader installed, as in an engine: torch's own
                cuda.use_reader(None)
                stand_in_torch()
        elif path in ("host_wait", "host_wait_py", "event_wait", "event_wait_py",
                      "event_sync", "event_sync_py"):
            from streamcheck.runtime import cuda
            from streamcheck.wrappers import speedups
            from streamcheck.wrappers.events import hook_host_waits

            reader = StreamReader(current_stream=CURRENT, current_device=int)
            cuda.use_reader(reader)
            if path.endswith("_py"):  # the Python hooks, everything else compiled
                speedups.use("python")
            if path.startswith(("host_wait", "event_sync")):
                hook_host_waits(registry, gate, Namespace, KeptStream, Event, reader)
                speedups.use("compiled")  # event_sync_py: the record's hook compiled
            if path.startswith(("event_sync", "event_wait")):
                hook_event_record(registry, gate, Event, reader)
            if path.startswith("event_wait"):
                hook_event_wait(registry, gate, Event, reader)
            speedups.use("compiled")
            streamcheck.handoff(KV)  # the first declared access: the clocks go live
        else:
            hook_stream_creation(registry, gate, MadeStream, "torch.cuda", DeviceHome(0))
    if path == "wrap":
        return lambda: MadeStream(stream_id=5, device_index=0, device_type=1)
    if path == "explicit":
        return lambda: comm.all_reduce(None, None, stream=SIDE)
    if path in ("kept", "fresh", "fresh_default"):
        return lambda: comm.all_reduce(None, None)
    if path in ("distributed", "distributed_helper"):
        return lambda: Distributed.all_reduce(KV)
    if path == "set_stream":
        set_stream = namespace.set_stream
        return lambda: set_stream(SIDE)
    if path == "wait_stream":
        return lambda: wait_stream(SIDE, KEPT)
    if path in ("stream_wait", "stream_wait_events"):
        return lambda: SIDE.wait_stream(KEPT)
    if path in ("handoff", "handoff_py", "handoff_torch"):
        def handoff() -> None:
            """The handoff, its result dropped: the loop compares what each call returns
            with a class, and a Handoff's dataclass ``__eq__`` is Python, which the count
            would otherwise take for the audit's."""
            streamcheck.handoff(KV)

        return handoff
    if path in ("launch_read", "launch_read_py"):
        def save() -> None:
            """The engine's handoff, then the connector's checked copy that reads it."""
            handoff = streamcheck.handoff(KV)
            with streamcheck.launch("bench.kv.save", stream=SIDE, device=0, reads=[handoff]):
                pass

        return save
    if path in ("host_wait", "host_wait_py"):
        def host_wait() -> None:
            """A connector's copy declared on its stream, then the host waiting for it: each
            wait has new work to take in (a repeated wait with none is cheaper)."""
            streamcheck.handoff(KV, SIDE)
            SIDE.synchronize()

        return host_wait
    if path in ("event_sync", "event_sync_py"):
        waited = Event()

        def event_sync() -> None:
            """The engine's handoff and an event recorded after it on its stream, then the
            connector's worker waiting for that event on the host: each wait has a new tick
            to take in."""
            streamcheck.handoff(KV, KEPT)
            waited.record(KEPT)
            waited.synchronize()

        return event_sync
    if path in ("event_wait", "event_wait_py"):
        event = Event()

        def event_wait() -> None:
            """The engine's handoff and an event recorded after it on its stream, and the
            connector's stream waiting on that event (``stream.wait_event``): each wait has
            a new tick to take in."""
            streamcheck.handoff(KV, KEPT)
            event.record(KEPT)
            SIDE.wait_event(event)

        return event_wait
    return MadeStream


def child(path: str, audited: bool, calls: int, cold: bool = False) -> None:
    """Make ``calls`` calls of the path (run under callgrind by :func:`count`); ``cold``: each
    after a sweep of the caches, outside the counted window."""
    sys.path.insert(0, str(ROOT))
    sys.modules["torch"] = None  # type: ignore[assignment]  # the audit without torch's hooks:
    # the paths here hook objects of their own, and torch's import under callgrind takes minutes
    from streamcheck.wrappers import speedups

    if not speedups.built():
        raise SystemExit("bench_hook_instructions: streamcheck._speedups is not built here "
                         "(scripts/build_speedups.sh)")
    call = prepare(path, audited)
    if cold:
        call()  # its first call (a site seen, a table made): counted neither way
        view = memoryview(bytearray(SWEEP_BYTES))
        once = (0,)
        for _ in range(calls):
            sum(view[::64])  # one byte a line: the caches hold the buffer, not the hook
            operator.countOf(map(lambda _: call(), once), Namespace)
        return
    # the loop runs inside countOf, the one C function callgrind counts in (--toggle-collect)
    operator.countOf(map(lambda _: call(), range(calls)), Namespace)


def count(path: str, audited: bool, calls: int) -> int:
    """Instructions a whole child process executes making ``calls`` calls."""
    return callgrind_events(path, audited, calls, cold=False)["Ir"]


def callgrind_events(path: str, audited: bool, calls: int, cold: bool) -> dict[str, int]:
    """callgrind's event totals inside the counted window of a child making ``calls`` calls
    (``cold``: with the cache simulation, each call after a sweep)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0", "STREAMCHECK_CORE": "compiled",
               "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--toggle-collect=_operator_countOf*",
             *(["--cache-sim=yes"] if cold else []), f"--callgrind-out-file={out}",
             os.path.realpath(sys.executable), __file__, "--child", path,
             "1" if audited else "0", str(calls), *(["--cold"] if cold else [])],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"counting {path} failed (rc {done.returncode}):\n{tail}")
        return event_totals(out.read_text(), path)


def event_totals(text: str, path: str) -> dict[str, int]:
    """The ``summary`` line of a callgrind output, by the names its ``events`` line gives
    (callgrind leaves out the zeros at the end of the line)."""
    names, totals = EVENTS.search(text), SUMMARY.search(text)
    if names is None or totals is None:
        raise RuntimeError(f"no event totals in callgrind's output for {path}")
    events, values = names.group(1).split(), [int(v) for v in totals.group(1).split()]
    if len(values) > len(events):
        raise RuntimeError(f"more totals than events in callgrind's output for {path}")
    return dict(zip(events, values + [0] * (len(events) - len(values)), strict=True))


def cold_lines(path: str, few: int, many: int) -> dict[str, float]:
    """The first-level cache lines (code, data) one cold call touches, audited and not."""
    row: dict[str, float] = {}
    for audited in (False, True):
        few_events = callgrind_events(path, audited, few, cold=True)
        many_events = callgrind_events(path, audited, many, cold=True)
        side = "audited" if audited else "unaudited"
        for name, events in (("code", ("I1mr",)), ("data", ("D1mr", "D1mw"))):
            lines = sum(many_events[e] - few_events[e] for e in events)
            row[f"{side} {name}"] = round(lines / (many - few), 1)
    for name in ("code", "data"):
        row[f"added {name}"] = round(row[f"audited {name}"] - row[f"unaudited {name}"], 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--few", type=int, default=None,
                        help="calls in the smaller run (default 2000; 20 with --cold)")
    parser.add_argument("--many", type=int, default=None,
                        help="calls in the larger run (default 12000; 120 with --cold)")
    parser.add_argument("--paths", nargs="+", choices=sorted(PATHS.values()),
                        default=list(PATHS.values()), help="the paths to count (default: all)")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    parser.add_argument("--cold", action="store_true",
                        help="count the cache lines a call touches after a sweep of the caches")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "AUDITED", "CALLS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, audited, calls = args.child
        child(path, audited == "1", int(calls), args.cold)
        return 0
    few, many = (20, 120) if args.cold else (2000, 12000)
    args.few = few if args.few is None else args.few
    args.many = many if args.many is None else args.many
    if args.few < 0 or args.many <= args.few:
        parser.error("--many must be larger than --few (and --few at least 0)")
    if shutil.which("valgrind") is None:
        print("bench_hook_instructions needs valgrind on PATH; none is here")
        return 2
    sys.path.insert(0, str(ROOT))
    from streamcheck.wrappers import speedups

    if not speedups.built():
        print("bench_hook_instructions counts the compiled hooks: streamcheck._speedups is not "
              "built here (scripts/build_speedups.sh)")
        return 2
    rows: dict[str, dict[str, float]] = {}
    between = args.many - args.few
    for label, path in PATHS.items():
        if path not in args.paths:
            continue
        if args.cold:
            rows[label] = lines = cold_lines(path, args.few, args.many)
            print(f"{label:<56} cold, lines a call: unaudited code {lines['unaudited code']:>6.1f}"
                  f" data {lines['unaudited data']:>6.1f}; audited code "
                  f"{lines['audited code']:>6.1f} data {lines['audited data']:>6.1f}; added code "
                  f"{lines['added code']:>6.1f} data {lines['added data']:>6.1f}", flush=True)
            continue
        per_call = {}
        for audited in (False, True):
            few, many = count(path, audited, args.few), count(path, audited, args.many)
            per_call["audited" if audited else "unaudited"] = round((many - few) / between, 1)
        per_call["added"] = round(per_call["audited"] - per_call["unaudited"], 1)
        rows[label] = per_call
        print(f"{label:<56} unaudited {per_call['unaudited']:>8.1f}  audited "
              f"{per_call['audited']:>8.1f}  added {per_call['added']:>8.1f} instructions a call",
              flush=True)
    if args.json:
        key = "cold_lines_per_call" if args.cold else "instructions_per_call"
        print(json.dumps({"python": sys.version.split()[0], "few": args.few,
                          "many": args.many, key: rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
