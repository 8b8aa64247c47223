"""What the audit covered: the targets it instrumented and the launches it saw at each.

"No findings" means nothing unless it comes with what was checked. Every audited process keeps
one :class:`Coverage`: a counter per launch site (op name, e.g. ``vllm.pynccl.all_reduce``),
each attributed to a target (``vllm.pynccl``), and the state of every target the audit asked
for (instrumented, waiting for its module to be imported, unavailable and why). Reports carry
both, so "0 launches audited" is visible and never reads as "checked and clean".

Counters are ``itertools.count`` objects, or with the compiled core its ``LaunchCounter``
(:data:`make_counter`), iterated the same way: ``next()`` on one is atomic under the GIL and
costs a few tens of nanoseconds, so the wrappers' hot path advances them without a lock; the
compiled hooks advance a ``LaunchCounter`` in place, with no int made per launch.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

#: A target's states, in the order a reader cares about them.
INSTRUMENTED = "instrumented"
WAITING = "not imported"
UNAVAILABLE = "unavailable"
STATE_RANK = {INSTRUMENTED: 0, WAITING: 1, UNAVAILABLE: 2}  # sort key; unknown states last


@dataclass
class TargetState:
    """One target as the report shows it."""

    name: str
    module: str
    state: str = WAITING
    methods: list[str] = field(default_factory=list)
    detail: str = ""
    source: str = "built-in"


#: What a new launch site's counter is: set by the core chosen (streamcheck/wrappers/speedups.py).
make_counter: Callable[[], Iterator[int]] = itertools.count


def read_count(counter: Iterator[int]) -> int:
    """The next value of ``counter`` without advancing it: an ``itertools.count``'s repr is
    ``count(N)``; a ``LaunchCounter`` says it as ``value``."""
    if type(counter) is itertools.count:
        return int(repr(counter)[6:-1])
    return int(counter.value)  # type: ignore[attr-defined]


class Coverage:
    """Targets and per-site launch counters of one auditor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, Iterator[int]] = {}
        self._base: dict[str, int] = {}  # counts before the last reset (wrappers keep counters)
        self._target_of_op: dict[str, str] = {}
        self._targets: dict[str, TargetState] = {}

    # ---- counters -------------------------------------------------------------------------

    def counter(self, op: str, target: str = "") -> Iterator[int]:
        """The counter of launch site ``op`` (made on first use), attributed to ``target``."""
        found = self._counters.get(op)
        if found is not None:
            return found
        with self._lock:
            found = self._counters.setdefault(op, make_counter())
            if target:
                self._target_of_op.setdefault(op, target)
            return found

    def launches(self) -> int:
        return sum(self.launches_by_op().values())

    def launches_by_op(self) -> dict[str, int]:
        return {op: read_count(c) - self._base.get(op, 0)
                for op, c in sorted(list(self._counters.items()))}

    def reset_counts(self) -> None:
        """Count from zero again (a forked child starts its own count).

        The wrappers hold their counter objects, so the counters stay and their current
        values become the new zero.
        """
        with self._lock:
            self._base = {op: read_count(c) for op, c in self._counters.items()}

    # ---- targets --------------------------------------------------------------------------

    def note_target(self, name: str, module: str, state: str, methods: list[str] | None = None,
                    detail: str = "", source: str = "built-in") -> None:
        """Record (or update) what became of target ``name``; methods accumulate."""
        with self._lock:
            entry = self._targets.get(name)
            if entry is None:
                entry = self._targets[name] = TargetState(name, module, source=source)
            if state == INSTRUMENTED or entry.state != INSTRUMENTED:
                entry.state = state
            for method in methods or ():
                if method not in entry.methods:
                    entry.methods.append(method)
            if detail or state != UNAVAILABLE:
                entry.detail = detail

    def targets(self) -> list[TargetState]:
        with self._lock:
            return [TargetState(t.name, t.module, t.state, list(t.methods), t.detail, t.source)
                    for t in self._targets.values()]

    def launches_by_target(self, by_op: dict[str, int],
                           targets: list[TargetState]) -> dict[str, int]:
        """Launches per target; ops no target claimed are counted under their own name.

        Takes counts and targets already read (:meth:`launches_by_op`, :meth:`targets`), so a
        report reads the counters once and its totals agree while launches go on.
        """
        out: dict[str, int] = {t.name: 0 for t in targets}
        for op, n in by_op.items():
            key = self._target_of_op.get(op, op)
            out[key] = out.get(key, 0) + n
        return out
