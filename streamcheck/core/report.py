"""The report as data: an :class:`AuditReport` (schema in docs/report-schema.md), built from
plain entries and metadata, never from an auditor (the auditor hands its own in:
``Auditor.report``).

Each process writes its own report; :func:`merge_reports` combines several (ranks, pytest-xdist
workers, child processes) into one, adding occurrence counts of identical findings. The writer,
``streamcheck report``, the pytest plugin's summary and the merge all work on the same type.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamcheck.core.coverage import STATE_RANK, Coverage
from streamcheck.core.explain import explain_finding
from streamcheck.core.ids import Stack, StreamRef, ThreadRef
from streamcheck.core.records import Finding, FindingEntry, StreamEvent

SCHEMA = "streamcheck.report/1"


def _stream(s: StreamRef | None) -> dict[str, int] | None:
    if s is None:
        return None
    return {"device": s.device, "stream_id": s.stream_id, "handle": s.handle}


def _thread(t: ThreadRef | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {"ident": t.ident, "name": t.name, "role": t.role}


def _stack(stack: Stack) -> list[dict[str, Any]]:
    return [{"file": f, "line": n, "function": fn} for f, n, fn in stack]


def _event(e: StreamEvent | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {
        "kind": e.kind, "stream": _stream(e.stream), "thread": _thread(e.thread),
        "time": e.time, "via": e.via, "stack": _stack(e.stack),
    }


def finding_to_dict(finding: Finding, count: int = 1) -> dict[str, Any]:
    launch = finding.launch
    return {
        "rule": finding.rule_id,
        "title": finding.title,
        "message": finding.message,
        "fix": finding.fix,
        "count": count,
        "text": explain_finding(finding, count),
        "launch": {
            "op": launch.op,
            "thread": _thread(launch.thread),
            "stream": _stream(launch.stream),
            "current_stream": _stream(launch.current),
            "target_device": launch.target_device,
            "implicit": launch.implicit,
            "accessor": launch.accessor,
            "time": launch.time,
            "stack": _stack(launch.stack),
        },
        "other_thread": _thread(finding.other_thread),
        "other_event": _event(finding.other_event),
        "other_stack_now": _stack(finding.other_stack_now),
    }


def coverage_to_dict(coverage: Coverage | None) -> dict[str, Any]:
    """The targets and per-op launch counts of one auditor (empty without one)."""
    if coverage is None:
        return {"launches_by_op": {}, "targets": []}
    by_op = coverage.launches_by_op()
    states = coverage.targets()
    by_target = coverage.launches_by_target(by_op, states)
    targets = [dict(asdict(t), launches=by_target.get(t.name, 0)) for t in states]
    return {"launches_by_op": by_op, "targets": targets}


#: The keys :class:`AuditReport` holds in fields; any other key of a report is in ``extra``.
_FIELDS = ("schema", "process", "merged_from", "per_process", "mode", "runtime", "final",
           "launches_audited", "launches_by_op", "targets", "findings")


@dataclass
class AuditReport:
    """One report of the schema (docs/report-schema.md): one process's (``process`` set) or a
    merge of several (``merged_from`` and ``per_process`` set).

    What the writer, ``streamcheck report``, the pytest plugin and :func:`merge_reports` share.
    Findings keep the schema's JSON form (:func:`finding_to_dict`) whoever made them: a live
    auditor, a child process's file, an xdist worker. ``extra`` holds the keys a caller adds
    (the pytest session's ``tests``, ``unattributed``, ...), written after the schema's own.
    """

    mode: str = "off"
    runtime: str = ""
    final: bool = True
    launches_audited: int = 0
    launches_by_op: dict[str, int] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    process: dict[str, Any] | None = None
    merged_from: list[dict[str, Any]] | None = None
    per_process: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (key order as the schema's examples have it)."""
        head: dict[str, Any] = {"schema": SCHEMA}
        if self.merged_from is not None:
            head.update(merged_from=self.merged_from, per_process=self.per_process)
        else:
            head["process"] = self.process if self.process is not None else {}
        return {
            **head,
            "mode": self.mode,
            "runtime": self.runtime,
            "final": self.final,
            "launches_audited": self.launches_audited,
            "launches_by_op": self.launches_by_op,
            "targets": self.targets,
            "findings": self.findings,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditReport:
        """A report read back (a file, an xdist worker's); raises ValueError for another
        document. Keys it does not know are kept in ``extra``."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise ValueError(f"not a {SCHEMA} report: schema={schema!r}")
        merged = "merged_from" in data
        return cls(
            mode=data.get("mode", "off"),
            runtime=data.get("runtime", ""),
            final=data.get("final", True),
            launches_audited=int(data.get("launches_audited", 0)),
            launches_by_op=dict(data.get("launches_by_op", {})),
            targets=list(data.get("targets", [])),
            findings=list(data.get("findings", [])),
            process=None if merged else dict(data.get("process", {})),
            merged_from=list(data["merged_from"]) if merged else None,
            per_process=list(data.get("per_process", [])),
            extra={k: v for k, v in data.items() if k not in _FIELDS},
        )


def this_process() -> dict[str, Any]:
    """Who wrote a report: pid, host, command line, when."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "argv": list(sys.argv),
            "time": time.time()}


def build_report(entries: Iterable[FindingEntry] = (), coverage: Coverage | None = None, *,
                 mode: str = "off", runtime: str = "", final: bool = True,
                 **extra: Any) -> AuditReport:
    """One process's report, from plain entries (distinct findings and their counts), the
    coverage of what was audited, and metadata. ``Auditor.report`` passes its own.

    ``final`` is False for a snapshot written while the process still runs: a report whose
    process was killed before its exit stays marked as such.
    """
    clash = set(extra) & set(_FIELDS)
    if clash:
        raise TypeError(f"build_report: {sorted(clash)} are the report's own fields, not extra")
    counts = coverage_to_dict(coverage)
    return AuditReport(
        mode=mode, runtime=runtime, final=final,
        launches_audited=sum(counts["launches_by_op"].values()),
        launches_by_op=counts["launches_by_op"], targets=counts["targets"],
        findings=[finding_to_dict(e.finding, e.count) for e in entries],
        process=this_process(), extra=extra,
    )


def merge_targets(reports: Iterable[AuditReport]) -> list[dict[str, Any]]:
    """One row per target over several processes: launches add up, the best state wins."""
    merged: dict[str, dict[str, Any]] = {}
    for report in reports:
        for target in report.targets:
            row = merged.get(target["name"])
            if row is None:
                merged[target["name"]] = dict(target, methods=list(target.get("methods", [])),
                                              processes=1)
                continue
            row["launches"] += target.get("launches", 0)
            row["processes"] += 1
            row["methods"] += [m for m in target.get("methods", []) if m not in row["methods"]]
            if STATE_RANK.get(target["state"], 3) < STATE_RANK.get(row["state"], 3):
                row["state"], row["detail"] = target["state"], target.get("detail", "")
    return list(merged.values())


def process_summary(report: AuditReport) -> dict[str, Any]:
    """One line per process in a merged report: who it was and what it audited."""
    process = report.process or {}
    summary = {"pid": process.get("pid"), "host": process.get("host"),
               "argv": process.get("argv", []), "mode": report.mode,
               "final": report.final,
               "launches_audited": report.launches_audited,
               "findings": len(report.findings)}
    if "stream_reads" in report.extra:  # a written process report's: how it read streams
        summary["stream_reads"] = report.extra["stream_reads"]
    return summary


def merge_key(finding: dict[str, Any]) -> tuple[object, ...]:
    """What makes findings from different processes the same finding.

    Not the message: it names thread idents and stream handles, which differ in every process.
    The rule, the operation, the thread's name and role and the launching line do not.
    """
    launch = finding["launch"]
    thread = launch.get("thread", {})
    stack = launch.get("stack") or [{}]
    top = stack[0]
    return (finding["rule"], launch["op"], thread.get("name"), thread.get("role"),
            top.get("file"), top.get("line"), top.get("function"))


def merge_reports(reports: Iterable[AuditReport]) -> AuditReport:
    """Combine per-process (or already merged) reports into one of the same schema.

    The same finding seen in several processes (:func:`merge_key`) is kept once, its counts
    added and every process that saw it listed in ``pids``; its text is the first process's.
    """
    reports = list(reports)
    merged: dict[tuple[object, ...], dict[str, Any]] = {}
    launches = 0
    by_op: dict[str, int] = {}
    processes: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    for report in reports:
        launches += report.launches_audited
        for op, n in report.launches_by_op.items():
            by_op[op] = by_op.get(op, 0) + n
        if report.merged_from is not None:  # a merged report merges again by its parts
            processes += report.merged_from
            summaries += report.per_process
        else:
            processes.append(report.process or {})
            summaries.append(process_summary(report))
        pid = (report.process or {}).get("pid")
        for finding in report.findings:
            pids = finding.get("pids") or ([pid] if pid is not None else [])
            key = merge_key(finding)
            if key in merged:
                merged[key]["count"] += finding["count"]
                merged[key]["pids"] += [p for p in pids if p not in merged[key]["pids"]]
            else:
                merged[key] = dict(finding, pids=list(pids))
    return AuditReport(
        merged_from=processes,
        per_process=summaries,
        mode=_common(r.mode for r in reports),
        runtime=merged_runtime(r.runtime for r in reports),
        final=all(r.final for r in reports),
        launches_audited=launches,
        launches_by_op=dict(sorted(by_op.items())),
        targets=merge_targets(reports),
        findings=list(merged.values()),
    )


def merged_runtime(values: Iterable[str]) -> str:
    """Processes that read no streams ("none": a launcher, a CPU-only parent) do not make a
    CUDA or simulator run "mixed"; two real runtimes do."""
    values = list(values)
    real = [v for v in values if v not in ("", "none")]
    return _common(real) if real else _common(values)


def _common(values: Iterable[str]) -> str:
    """The one value all parts share, "mixed" when they differ, "" when there are none."""
    distinct = sorted(set(values))
    return distinct[0] if len(distinct) == 1 else ("mixed" if distinct else "")


def write_report(report: AuditReport, path: str | Path) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_report(path: str | Path) -> AuditReport:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no report at {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a streamcheck report (expected schema {SCHEMA})")
    return AuditReport.from_dict(data)
