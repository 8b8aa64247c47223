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
    """The arms in round ``index``'s order, from a Williams design: over ``len(arms)`` rounds
    (twice that for an odd count) each arm takes each place in a round equally often, and
    each arm runs right after each other arm equally often. Places alone were not enough:
    with the order only turned (each round starting one arm later), the arm after a given one
    was always the same, and on an H200 a copy of the unaudited arm, fourth of four, measured
    1.0265 (1.0042-1.0506) times the unaudited one, where the audited arm measured 1.0214
    (``torch.distributed`` all-reduce, 150 rounds: docs/measurements.md, twenty-ninth
    session). Two arms take turns first, as before. The balance is exact over a whole number
    of designs (``len(williams_orders(n))`` rounds: 2 for two arms, 6 for three, 4 for four)
    and close over any other count."""
    order = williams_orders(len(arms))
    return [arms[i] for i in order[index % len(order)]]


def williams_orders(count: int) -> list[list[int]]:
    """The rounds' orders of ``count`` arms, each a list of their indices: a Williams design
    (the first order 0, 1, n-1, 2, n-2, ..., each next one every index plus one, and for an
    odd ``count`` each of those reversed too), its indices renamed so that the first order is
    0, 1, ..., n-1."""
    first = [0] if count else []
    low, high = 1, count - 1
    for place in range(1, count):
        if place % 2:
            first.append(low)
            low += 1
        else:
            first.append(high)
            high -= 1
    orders = [[(i + shift) % count for i in first] for shift in range(count)]
    if count % 2 and count > 1:
        orders += [order[::-1] for order in orders]
    # renamed so that the first round runs the arms as given (a renaming keeps the balance)
    name = {index: place for place, index in enumerate(first)}
    return [[name[index] for index in order] for order in orders]
