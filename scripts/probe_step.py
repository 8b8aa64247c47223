"""What an audited step of the stream-heavy loop runs and where its handoff's time goes.

Two probes of ``bench_stream_loop.py``'s step (16 layers: a side stream entered, ``wait_stream``
both ways, matmuls and a ``torch.distributed`` all-reduce, then the step's KV handed to a
connector thread), one rank on one GPU:

``calls``
    Counts every Python function of streamcheck's that runs in an audited step, in every
    thread (``threading.setprofile_all_threads``, Python 3.12+), per step. A compiled hook
    that hands a call to its Python fallback shows here: in a healthy step only the public
    API's own frames run (``streamcheck.handoff`` in the engine's thread, ``launch`` in the
    connector's).
``handoffs``
    Times the step's handoffs one by one, unaudited and in ``assert`` mode, with the
    connector thread and without it, with the collector on and off: the first declared access
    after the step's torch work (a second tensor), the step's own right after it, and a third;
    then the same handoff in a tight loop. The first one's excess over the next ones is what
    the step's work evicted from the CPU's caches; a collection inside a timed handoff is
    counted (``gc.callbacks``).

    python scripts/probe_step.py calls [--steps 50]
    python scripts/probe_step.py handoffs [--steps 300]

Needs a CUDA GPU (and Python 3.12 for ``calls``).
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

import streamcheck

LAYERS = 16


def per_step(counts: collections.Counter[tuple[str, str, str]], steps: int
             ) -> list[tuple[str, str, str, float]]:
    """(thread, file, function, calls a step), the most called first."""
    return [(*key, count / steps) for key, count in counts.most_common()]


def handoff_row(label: str, rows: list[tuple[int, int, int, int]]) -> str:
    """One case of ``handoffs``: each handoff's median and 90th percentile (ns), and the steps
    in which a collection ran inside the timed handoffs."""
    parts = []
    for name, column in zip(("first", "second", "third"), list(zip(*rows, strict=True))[:3],
                            strict=True):
        ordered = sorted(column)
        parts.append(f"{name} {statistics.median(column):8.0f} "
                     f"(p90 {ordered[int(len(ordered) * 0.9)]:8.0f})")
    collected = sum(1 for row in rows if row[3])
    return (f"{label:44} {'  '.join(parts)} ns; steps with a collection inside: "
            f"{collected}/{len(rows)}")


class Loop:
    """The loop's step on one GPU, with its connector thread (``bench_stream_loop.KVSaver``)."""

    def __init__(self) -> None:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bench_stream_loop

        torch.cuda.set_device(0)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29658")
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
        self.x0 = torch.randn(16, 256, device="cuda") / 16
        self.w = torch.randn(256, 256, device="cuda") / 16
        self.kv = torch.empty(16, 256, device="cuda")
        self.other = torch.empty(16, 256, device="cuda")
        self.side = torch.cuda.Stream()
        self.saver = bench_stream_loop.KVSaver(0, self.kv)
        self.saver.start()

    def step(self, x: torch.Tensor, handoffs: Callable[[], Any], with_saver: bool = True
             ) -> torch.Tensor:
        """``bench_stream_loop.step``, its handoff made by ``handoffs`` (which returns the one
        the connector reads)."""
        main = torch.cuda.current_stream()
        for _ in range(LAYERS):
            self.side.wait_stream(main)
            with torch.cuda.stream(self.side):
                y = x @ self.w
            main.wait_stream(self.side)
            x = torch.tanh(x @ self.w + y)
            dist.all_reduce(x)
        self.kv.copy_(x[: self.kv.shape[0]], non_blocking=True)
        handoff = handoffs()
        event = torch.cuda.Event()
        event.record()
        if with_saver:
            self.saver.jobs.put((event, handoff))
            self.saver.submitted += 1
        return x

    def run(self, steps: int, handoffs: Callable[[], Any], with_saver: bool = True) -> None:
        x = self.x0
        for _ in range(steps):
            x = self.step(x, handoffs, with_saver)
        torch.cuda.synchronize()
        while self.saver.done < self.saver.submitted:
            time.sleep(0.0001)

    def close(self) -> None:
        self.saver.jobs.put(None)
        self.saver.join()
        dist.destroy_process_group()


def probe_calls(loop: Loop, steps: int) -> None:
    package = os.path.dirname(streamcheck.__file__) + os.sep
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()

    def profile(frame: Any, event: str, _arg: Any) -> None:
        name = frame.f_code.co_filename
        if event == "call" and (name.startswith(package) or name.startswith("<streamcheck")):
            counts[(threading.current_thread().name, name.removeprefix(package),
                    frame.f_code.co_name)] += 1

    def handoff() -> Any:
        return streamcheck.handoff(loop.kv)

    loop.run(20, handoff)
    auditor = streamcheck.install("assert")
    loop.run(3, handoff)
    before = auditor.launches
    threading.setprofile_all_threads(profile)
    try:
        loop.run(steps, handoff)
    finally:
        threading.setprofile_all_threads(None)
    print(f"{steps} audited steps, {auditor.launches - before} launches audited, "
          f"findings {len(auditor.findings())}")
    print("streamcheck's Python functions called (thread, file, function): calls a step")
    for thread, file, function, rate in per_step(counts, steps):
        print(f"  {thread:12} {file:40} {function:30} {rate:8.2f}")
    if not counts:
        print("  none")
    streamcheck.uninstall()


def probe_handoffs(loop: Loop, steps: int) -> None:
    collections_started = [0]

    def count(phase: str, _info: dict[str, Any]) -> None:
        collections_started[0] += phase == "start"

    gc.callbacks.append(count)
    clock = time.perf_counter_ns
    rows: list[tuple[int, int, int, int]] = []

    def timed() -> Any:
        seen, t0 = collections_started[0], clock()
        streamcheck.handoff(loop.other)
        t1 = clock()
        handoff = streamcheck.handoff(loop.kv)
        t2 = clock()
        streamcheck.handoff(loop.other)
        t3 = clock()
        rows.append((t1 - t0, t2 - t1, t3 - t2, collections_started[0] - seen))
        return handoff

    loop.run(20, timed)
    auditor = None
    for mode in ("off", "assert"):
        if mode == "assert":
            auditor = streamcheck.install("assert")
            loop.run(20, timed)
        for with_saver in (True, False):
            for collector in (True, False):
                rows.clear()
                if not collector:
                    gc.disable()
                try:
                    loop.run(steps, timed, with_saver)
                finally:
                    gc.enable()
                print(handoff_row(f"{mode}, connector thread {with_saver}, collector "
                                  f"{collector}", rows))
    tight = []
    for _ in range(3000):
        t0 = clock()
        streamcheck.handoff(loop.kv)
        tight.append(clock() - t0)
    print(f"tight loop, assert: {statistics.median(tight):.0f} ns "
          f"(p90 {sorted(tight)[int(len(tight) * 0.9)]})")
    print(f"findings {len(auditor.findings())}, launches audited {auditor.launches}")
    streamcheck.uninstall()
    gc.callbacks.remove(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=["calls", "handoffs"])
    parser.add_argument("--steps", type=int, default=None,
                        help="audited steps counted or timed (default: 50 calls, 300 handoffs)")
    args = parser.parse_args()
    steps = args.steps if args.steps is not None else (50 if args.probe == "calls" else 300)
    if steps < 1:
        parser.error("--steps must be at least 1")
    if args.probe == "calls" and not hasattr(threading, "setprofile_all_threads"):
        print("probe_step calls needs Python 3.12 (threading.setprofile_all_threads)")
        return 2
    if not torch.cuda.is_available():
        print("probe_step needs a CUDA GPU; none is visible here")
        return 2
    from streamcheck.wrappers import speedups

    loop = Loop()
    try:
        print("hooks:", speedups.describe())
        (probe_calls if args.probe == "calls" else probe_handoffs)(loop, steps)
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
