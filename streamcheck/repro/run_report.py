"""The typed results of ``streamcheck run``: a :class:`RunReport` of :class:`VariantResult` rows.

The report owns the ``streamcheck.run/1`` document: :meth:`RunReport.to_json` writes it and
:meth:`RunReport.from_json` reads one back (checked against ``schemas/run-1.json`` first), so
``run --json`` and ``report`` agree on it by construction. The counts and the exit code are
derived from the rows, never kept beside them.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from streamcheck.documents import RUN_SCHEMA, DocumentError, validate
from streamcheck.repro.records import RankRecord

#: a row's possible verdicts; schemas/run-1.json lists the same (a test holds them together)
VERDICTS = ("pass", "fail", "skip", "cancelled")


@dataclass
class VariantResult:
    """One variant's outcome: a row of ``streamcheck.run/1``'s ``results``."""

    repro: str
    variant: str
    backend: str
    world_size: int
    expected: str
    observed: str
    verdict: str  # one of VERDICTS
    seconds: float
    reason: str = ""
    dumps: dict[str, str] = field(default_factory=dict)  # pid -> stacks of a hung process
    ranks: dict[int, list[RankRecord]] = field(default_factory=dict)
    stderr: dict[str, str] = field(default_factory=dict)  # file name -> its last 6000 chars

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:  # the counts and the exit code read only these
            raise ValueError(f"{self.repro} {self.variant}: verdict {self.verdict!r} is not "
                             f"one of {', '.join(VERDICTS)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "repro": self.repro, "variant": self.variant, "backend": self.backend,
            "world_size": self.world_size, "expected": self.expected,
            "observed": self.observed, "verdict": self.verdict, "seconds": self.seconds,
            "reason": self.reason, "dumps": dict(self.dumps),
            "ranks": {rank: [r.to_json() for r in records]
                      for rank, records in self.ranks.items()},
            "stderr": dict(self.stderr),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VariantResult:
        """A row read back (a saved run); rank records it cannot read are left out."""
        ranks: dict[int, list[RankRecord]] = {}
        for rank, records in (data.get("ranks") or {}).items():
            for raw in records:
                try:
                    ranks.setdefault(int(rank), []).append(RankRecord.from_json(raw))
                except (ValueError, TypeError):
                    continue
        return cls(
            repro=data["repro"], variant=data["variant"], backend=data["backend"],
            world_size=int(data["world_size"]), expected=data["expected"],
            observed=data["observed"], verdict=data["verdict"],
            seconds=float(data["seconds"]), reason=data.get("reason", ""),
            dumps=dict(data.get("dumps") or {}), ranks=ranks,
            stderr=dict(data.get("stderr") or {}),
        )


@dataclass
class RunReport:
    """One run: the backend it ran on, every planned variant's row in plan order, how long it
    took, and the signal that stopped it, if one did. ``work_dir`` and ``logs_kept`` say where
    the rank logs are (not part of the document)."""

    backend: str
    backend_note: str
    seconds: float
    results: list[VariantResult] = field(default_factory=list)
    stopped_by: str | None = None  # a signal's name: "SIGTERM"
    work_dir: Path | None = None
    logs_kept: bool = False

    schema: ClassVar[str] = RUN_SCHEMA

    def _count(self, verdict: str) -> int:
        return sum(r.verdict == verdict for r in self.results)

    @property
    def matched(self) -> int:
        return self._count("pass")

    @property
    def mismatched(self) -> int:
        return self._count("fail")

    @property
    def skipped(self) -> int:
        return self._count("skip")

    @property
    def cancelled(self) -> int:
        return self._count("cancelled")

    @property
    def exit_code(self) -> int:
        """128 + the signal's number when a signal stopped the run; else 1 on a mismatch."""
        if self.stopped_by is not None:
            return 128 + int(signal.Signals[self.stopped_by])
        return 1 if self.mismatched else 0

    def rows(self) -> list[dict[str, Any]]:
        """The results as the document's rows (what the tables and JUnit render)."""
        return [r.to_json() for r in self.results]

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "schema": RUN_SCHEMA, "backend": self.backend, "backend_note": self.backend_note,
            "seconds": round(self.seconds, 2), "results": self.rows(),
            "summary": {"matched": self.matched, "mismatched": self.mismatched,
                        "skipped": self.skipped, "cancelled": self.cancelled},
        }
        if self.stopped_by is not None:
            document["stopped_by"] = self.stopped_by
        return document

    def to_text(self) -> str:
        """The document as ``run --json`` writes it."""
        return json.dumps(self.to_json(), indent=2, default=str)

    @classmethod
    def from_json(cls, data: Any, where: str = "run document") -> RunReport:
        """A saved run, read back; DocumentError (naming ``where``) when it is not one."""
        kind = validate(data, where)
        if kind != RUN_SCHEMA:
            raise DocumentError(f"{where}: a {kind} document, not a {RUN_SCHEMA} one")
        return cls(backend=data["backend"], backend_note=data.get("backend_note", ""),
                   seconds=float(data["seconds"]), stopped_by=data.get("stopped_by"),
                   results=[VariantResult.from_json(row) for row in data["results"]])
