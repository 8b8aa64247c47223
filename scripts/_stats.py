"""Ratios of paired timing rounds and what they show against a target, for the benchmarks.

A benchmark here alternates rounds with the audit and without it, so a host that drifts over
the run moves both runs of a round alike; each round's own ratio (audited over the same
round's unaudited run) is what is compared. On the GPU hosts those ratios are far from normal
(one run's rounds span 0.68-1.80), so a target is judged by a distribution-free interval for
their median: met only when the whole interval is at or under it, not met when the whole
interval is above it, and otherwise not shown either way (one ratio can land on either side of
a target by chance)."""

from __future__ import annotations

import math
import statistics
from typing import TypeVar

Interval = tuple[float | None, float | None]  # (None, None): too few rounds for one
T = TypeVar("T")


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """An interval that holds the median of the values' distribution with at least ``level``
    probability, from order statistics alone (the binomial(n, 1/2) tails): it assumes only that
    the rounds are independent. None when there are too few values for ``level`` (fewer than
    6 for 95 %)."""
    n = len(values)
    tail, below, j = (1 - level) / 2, 0.0, 0
    for i in range(n):  # j: the most values that may lie outside on one side
        below += math.comb(n, i) / 2 ** n
        if below > tail:
            break
        j = i + 1
    if j == 0:
        return None
    ordered = sorted(values)
    return ordered[j - 1], ordered[n - j]


Paired = tuple[float, float, float, float | None, float | None]  # median, least, most, interval


def paired_ratio(audited: list[float], plain: list[float]) -> Paired:
    """Each round's audited time over the same round's unaudited one (run back to back):
    their median, least and most, and a 95 % interval for the median (None, None with fewer
    than 6 rounds)."""
    return _summary([a / p for a, p in zip(audited, plain, strict=True)], 4)


def paired_added(audited: list[float], plain: list[float], per: int = 1) -> Paired:
    """The same for what each round's audited run added to its unaudited one (``per``: calls
    of the hook in one timed call), in the timings' unit."""
    return _summary([(a - p) / per for a, p in zip(audited, plain, strict=True)], 1)


def _summary(values: list[float], digits: int) -> Paired:
    lo, hi = median_interval(values) or (None, None)
    return (round(statistics.median(values), digits), round(min(values), digits),
            round(max(values), digits), None if lo is None else round(lo, digits),
            None if hi is None else round(hi, digits))


def target_verdict(intervals: list[Interval], target: float) -> str:
    """Met only if every interval (one a rank) lies at or under ``target``, not met if one lies
    above it; otherwise not shown either way."""
    if any(lo is None or hi is None for lo, hi in intervals):
        return "not shown either way: too few rounds for an interval (6 at least)"
    if all(hi <= target for _lo, hi in intervals):  # type: ignore[operator]
        return "met"
    if any(lo > target for lo, _hi in intervals):  # type: ignore[operator]
        return "NOT met"
    return "not shown either way: the interval holds it"


def in_turn(arms: list[T], index: int) -> list[T]:
    """The arms in round ``index``'s order: each round starts one arm later (unaudited first,
    then the first audited one, ...), so each arm takes each place in a round equally often
    and whatever a run's place does to it (the host speeding up or slowing down within the
    round, a round's first run after the last one's) falls on every arm alike; with the
    unaudited run always first, it fell on the audited ones. The order stays cyclic: which arm
    runs just before which is not balanced (a Latin square of every order would be)."""
    shift = index % len(arms)
    return arms[shift:] + arms[:shift]
