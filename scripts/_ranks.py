"""One spawned process per GPU rank for the GPU check scripts: start them, collect the results
they queue, and leave none behind — also when a rank hangs and the wait times out, and without
waiting out that timeout when a rank has already died."""

from __future__ import annotations

import queue as queue_module
import time
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

POLL_S = 0.5  # how often the wait for results looks for a rank that died


def run_ranks(target: Callable[..., None], world: int, extra: tuple[Any, ...], expected: int,
              timeout: float, grace: float = 60.0) -> list[dict[str, Any]]:
    """Run ``target(rank, world, *extra, queue)`` for every rank and return ``expected`` queued
    results. Raises ``queue.Empty`` if they do not come within ``timeout`` seconds each, and
    ``RuntimeError`` as soon as a rank exits with an error before they all came (its traceback
    is on stderr; the others would wait for it until the timeout); the rank processes are
    killed then, and after ``grace`` seconds otherwise."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(rank, world, *extra, queue))
             for rank in range(world)]
    results: list[dict[str, Any]] = []
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        while len(results) < expected:
            try:
                results.append(queue.get(timeout=POLL_S))
                deadline = time.monotonic() + timeout
                continue
            except queue_module.Empty:
                pass
            dead = [(rank, p.exitcode) for rank, p in enumerate(procs)
                    if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"rank(s) exited with an error before sending their "
                                   f"results (rank, exit code): {dead}")
            if time.monotonic() > deadline:
                raise queue_module.Empty
    finally:
        wait = grace if len(results) == expected else 0.0
        for p in procs:
            if p.pid is not None:
                p.join(wait)
                if p.is_alive():
                    p.kill()
                    p.join()
    return results
