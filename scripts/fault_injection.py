"""Faults for the real-engine checks, kept apart from vLLM so a CPU test can run them."""

from __future__ import annotations

import time
from typing import Any


class NotBefore:
    """A completion event that reports done no sooner than ``at`` (``time.perf_counter``):
    a save to a slow store, which stays in flight that long, while nobody waits for it."""

    def __init__(self, inner: Any, at: float) -> None:
        self.inner, self.at = inner, at

    def query(self) -> bool:
        return time.perf_counter() >= self.at and (self.inner is None or self.inner.query())

    def synchronize(self) -> None:
        time.sleep(max(0.0, self.at - time.perf_counter()))
        if self.inner is not None:
            self.inner.synchronize()


def inject_faults(runtime: Any, every: int, slow_s: float) -> list[int]:
    """Wrap ``runtime``'s slab transfers: every ``every``-th load (0: none) flips one bit of
    the first host block it reads before reading it, every save takes ``slow_s`` longer: a
    worker thread's save sleeps first; a save the engine thread issues (held saves, the
    connector's way) is not slept in, which would stall the engine, but completes no sooner.
    Returns the counters [loads seen, faults injected], which the connector's metrics report.

    The wrappers pass on whatever arguments the runtime gives, so a change to the runtime's
    calls cannot turn every load into a failure here (it did once: every load was recomputed
    and the outputs matched, which only the driver's ``loads_exercised`` check noticed)."""
    assert runtime is not None and runtime.slab is not None, "needs the host backend"
    issue_save, issue_load, issue_now = (runtime._slab_save, runtime._slab_load,
                                         runtime.load_planes_now)
    counts = [0, 0]

    def corrupt(plane: int, slots: Any) -> None:
        counts[0] += 1
        if every and counts[0] % every == 0 and slots:
            runtime.slab.data[plane, slots[0], 7] ^= 0x20  # one flipped bit
            counts[1] += 1

    def save(job: Any, *args: Any, **kwargs: Any) -> Any:
        if slow_s and not runtime.hold_saves:
            time.sleep(slow_s)
        issued = issue_save(job, *args, **kwargs)
        if slow_s and runtime.hold_saves and issued is not None:
            issued.done = NotBefore(issued.done, time.perf_counter() + slow_s)
        return issued

    def load(job: Any, *args: Any, **kwargs: Any) -> Any:
        corrupt((job.planes or [job.layer])[0], job.slots)
        return issue_load(job, *args, **kwargs)

    def load_now(planes: Any, block_ids: Any, slots: Any, *args: Any, **kwargs: Any) -> Any:
        """A sync load: the same fault, on the engine's thread."""
        corrupt(planes[0], slots)
        return issue_now(planes, block_ids, slots, *args, **kwargs)

    runtime._slab_save, runtime._slab_load = save, load
    runtime.load_planes_now = load_now
    return counts
