"""Faults for the real-engine checks, kept apart from vLLM so a CPU test can run them."""

from __future__ import annotations

import time
from typing import Any


def inject_faults(runtime: Any, every: int, slow_s: float) -> list[int]:
    """Wrap ``runtime``'s slab transfers: every ``every``-th load (0: none) flips one bit of
    the first host block it reads before reading it, every save first sleeps ``slow_s``.
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
        if slow_s:
            time.sleep(slow_s)
        return issue_save(job, *args, **kwargs)

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
