"""One test's findings: those its own process raised and those its child processes reported.

The listener that fills an :class:`ItemRecord` runs in whatever thread launched, so adding is
locked. In-process findings stay :class:`~streamcheck.core.records.Finding` objects until they
are read (the explanation and the dict cost a stack format; most tests have none to format);
child processes' findings arrive already as report dicts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from streamcheck.core.explain import explain_finding
from streamcheck.core.records import Finding, FindingEntry
from streamcheck.core.report import AuditReport, finding_to_dict


@dataclass(frozen=True)
class Observed:
    """One distinct finding seen while a test ran, wherever it was raised.

    ``pid`` is None for the test's own process, else the child process that reported it;
    ``finding`` is the live record for in-process findings, ``data`` a child's report dict.
    """

    key: tuple[object, ...]
    rule_id: str
    op: str
    count: int
    text: str
    pid: int | None = None
    argv: tuple[str, ...] = ()
    finding: Finding | None = field(default=None, compare=False)
    data: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        if self.pid is None:
            return "this process"
        cmd = " ".join(self.argv)
        return f"child process {self.pid}" + (f" ({cmd[:60]})" if cmd else "")

    def to_dict(self, allowed: bool) -> dict[str, Any]:
        """The report's form: the core's finding dict plus where it came from."""
        if self.finding is not None:
            data = finding_to_dict(self.finding, self.count)
        else:
            data = dict(self.data or {})
        data["allowed"] = allowed
        data["child"] = None if self.pid is None else {"pid": self.pid, "argv": list(self.argv)}
        return data


def _child_observed(data: dict[str, Any], process: dict[str, Any], index: int) -> Observed:
    pid = int(process.get("pid", 0))
    return Observed(
        key=("child", pid, index),
        rule_id=str(data.get("rule", "?")),
        op=str(data.get("launch", {}).get("op", "?")),
        count=int(data.get("count", 1)),
        text=str(data.get("text") or data.get("message", "")),
        pid=pid,
        argv=tuple(str(a) for a in process.get("argv", ())),
        data=data,
    )


class ItemRecord:
    """Findings attributed to one test (nodeid), and which of them were already reported."""

    def __init__(self, nodeid: str, allow: frozenset[str] = frozenset()) -> None:
        self.nodeid = nodeid
        self.allow = allow
        self._lock = threading.Lock()
        self._local: dict[tuple[object, ...], FindingEntry] = {}
        self._children: list[Observed] = []
        self._surfaced: set[tuple[object, ...]] = set()

    def add(self, finding: Finding) -> None:
        """The auditor listener: called in the launching thread, repeats included."""
        key = finding.dedupe_key
        with self._lock:
            entry = self._local.get(key)
            if entry is None:
                self._local[key] = FindingEntry(finding)
            else:
                entry.count += 1

    def add_child_report(self, report: AuditReport) -> None:
        process = report.process or {}
        with self._lock:
            for data in report.findings:
                self._children.append(_child_observed(data, process, len(self._children)))

    def observed(self) -> list[Observed]:
        with self._lock:
            local = [(key, FindingEntry(e.finding, e.count)) for key, e in self._local.items()]
            children = list(self._children)
        mine = [
            Observed(key, e.finding.rule_id, e.finding.launch.op, e.count,
                     explain_finding(e.finding, e.count), finding=e.finding)
            for key, e in local
        ]
        return mine + children

    def __bool__(self) -> bool:
        return bool(self._local or self._children)

    def is_allowed(self, obs: Observed) -> bool:
        return obs.rule_id in self.allow

    def take_unsurfaced(self, exclude: set[tuple[object, ...]] = frozenset()) -> list[Observed]:
        """Findings not yet put in any report and not allowed; marks them (and ``exclude``)."""
        fresh = [o for o in self.observed()
                 if o.key not in self._surfaced and o.key not in exclude
                 and not self.is_allowed(o)]
        self._surfaced.update(o.key for o in fresh)
        self._surfaced.update(exclude)
        return fresh

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(o.to_dict(self.is_allowed(o)), test=self.nodeid) for o in self.observed()]
