"""One spawned process per GPU rank for the GPU check scripts: start them, collect the results
they queue, and leave none behind — also when a rank hangs and the wait times out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def run_ranks(target: Callable[..., None], world: int, extra: tuple[Any, ...], expected: int,
              timeout: float, grace: float = 60.0) -> list[dict[str, Any]]:
    """Run ``target(rank, world, *extra, queue)`` for every rank and return ``expected`` queued
    results. Raises ``queue.Empty`` if they do not come within ``timeout`` seconds each; the
    rank processes are killed then, and after ``grace`` seconds otherwise."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(rank, world, *extra, queue))
             for rank in range(world)]
    results: list[dict[str, Any]] = []
    try:
        for p in procs:
            p.start()
        results = [queue.get(timeout=timeout) for _ in range(expected)]
    finally:
        wait = grace if len(results) == expected else 0.0
        for p in procs:
            if p.pid is not None:
                p.join(wait)
                if p.is_alive():
                    p.kill()
                    p.join()
    return results
