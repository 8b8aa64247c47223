"""Connector metrics: bytes and GB/s per direction, hits/misses, pending work, failures."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class DirectionStats:
    """Totals for one direction; ``copy_*`` is the device <-> pinned-host stage alone."""

    bytes: int = 0
    seconds: float = 0.0
    transfers: int = 0
    copy_bytes: int = 0
    copy_seconds: float = 0.0

    def add_copy(self, nbytes: int, seconds: float) -> None:
        self.copy_bytes += nbytes
        self.copy_seconds += seconds

    @property
    def copy_gbps(self) -> float:
        return self.copy_bytes / self.copy_seconds / 1e9 if self.copy_seconds > 0 else 0.0

    def add(self, nbytes: int, seconds: float) -> None:
        self.bytes += nbytes
        self.seconds += seconds
        self.transfers += 1

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


@dataclass
class LoadTiming:
    """Where a host-slab load's time goes: issuing it on the engine thread (Python and
    torch calls); on the device, waiting for the engine's stream as it was at the issue (the
    forward's reads of the blocks come first) and then running (copies, checks, scatters),
    both from CUDA timing events; and from the end of the issue to its retirement (those two
    plus the wait for the engine's next poll). Milliseconds, summed over ``loads``.

    Which of the two ends a load's wait, the device or the engine's polling, shows in
    ``first_poll_ms`` (the end of the issue to the first poll that looked at the load) and
    ``polls_waiting`` (polls that found it still running): a late first poll and none
    waiting is the engine's step cadence; many waiting polls is the device. Polls look at the
    oldest issued load first, so a load behind a slower one counts from when it became the
    oldest."""

    loads: int = 0
    issue_ms: float = 0.0
    ready_wait_ms: float = 0.0
    device_ms: float = 0.0
    retire_ms: float = 0.0
    polled_loads: int = 0
    first_poll_ms: float = 0.0
    polls_waiting: int = 0

    def polled(self, first_poll_ms: float, polls_waiting: int) -> None:
        """A load retired by polls: when the first came, and how many found it running."""
        self.polled_loads += 1
        self.first_poll_ms += first_poll_ms
        self.polls_waiting += polls_waiting

    def add(self, issue_ms: float, ready_wait_ms: float, device_ms: float,
            retire_ms: float) -> None:
        self.loads += 1
        self.issue_ms += issue_ms
        self.ready_wait_ms += ready_wait_ms
        self.device_ms += device_ms
        self.retire_ms += retire_ms

    def averages(self) -> dict[str, float]:
        n = max(self.loads, 1)
        return {"slab_loads": self.loads, "load_issue_ms": round(self.issue_ms / n, 3),
                "load_ready_wait_ms": round(self.ready_wait_ms / n, 3),
                "load_device_ms": round(self.device_ms / n, 3),
                "load_retire_ms": round(self.retire_ms / n, 3),
                "load_first_poll_ms": round(self.first_poll_ms / max(self.polled_loads, 1), 3),
                "load_polls_waiting": round(self.polls_waiting / max(self.polled_loads, 1), 2)}


@dataclass
class ConnectorMetrics:
    save: DirectionStats = field(default_factory=DirectionStats)
    load: DirectionStats = field(default_factory=DirectionStats)
    lookup_hits: int = 0
    lookup_misses: int = 0
    failed_saves: int = 0
    failed_loads: int = 0
    hazards_stopped: int = 0
    polls: int = 0
    slab_load: LoadTiming = field(default_factory=LoadTiming)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self, pending: int = 0) -> dict[str, float | int]:
        with self._lock:
            return {
                "save_bytes": self.save.bytes, "save_gbps": round(self.save.gbps, 3),
                "save_copy_gbps": round(self.save.copy_gbps, 3),
                "load_bytes": self.load.bytes, "load_gbps": round(self.load.gbps, 3),
                "load_copy_gbps": round(self.load.copy_gbps, 3),
                "lookup_hits": self.lookup_hits, "lookup_misses": self.lookup_misses,
                "failed_saves": self.failed_saves, "failed_loads": self.failed_loads,
                "hazards_stopped": self.hazards_stopped, "pending": pending,
                "polls": self.polls, **self.slab_load.averages(),
            }
