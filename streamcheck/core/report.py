"""The report as data: findings turned into a JSON-ready dict (schema in docs/report-schema.md).

Each process writes its own report; :func:`merge_reports` combines several (ranks, pytest-xdist
workers, child processes) into one, adding occurrence counts of identical findings.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from streamcheck.core.auditor import Auditor, FindingEntry
from streamcheck.core.coverage import STATE_RANK, Coverage
from streamcheck.core.explain import explain_finding
from streamcheck.core.ids import Stack, StreamRef, ThreadRef
from streamcheck.core.records import Finding, StreamEvent

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


def build_report(auditor: Auditor | None, entries: Iterable[FindingEntry] | None = None,
                 final: bool = True, **extra: Any) -> dict[str, Any]:
    """One process's report. ``entries`` overrides the auditor's (e.g. one test's findings).

    ``final`` is False for a snapshot written while the process still runs: a report whose
    process was killed before its exit stays marked as such.
    """
    if entries is None:
        entries = auditor.entries() if auditor is not None else []
    findings = [finding_to_dict(e.finding, e.count) for e in entries]
    counts = coverage_to_dict(auditor.coverage if auditor is not None else None)
    return {
        "schema": SCHEMA,
        "process": {
            "pid": os.getpid(), "host": socket.gethostname(), "argv": list(sys.argv),
            "time": time.time(),
        },
        "mode": auditor.mode.value if auditor is not None else "off",
        "runtime": auditor.runtime if auditor is not None else "",
        "final": final,
        "launches_audited": sum(counts["launches_by_op"].values()),
        **counts,
        "findings": findings,
        **extra,
    }


def merge_targets(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target over several processes: launches add up, the best state wins."""
    merged: dict[str, dict[str, Any]] = {}
    for report in reports:
        for target in report.get("targets", []):
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


def process_summary(report: dict[str, Any]) -> dict[str, Any]:
    """One line per process in a merged report: who it was and what it audited."""
    process = report.get("process", {})
    return {"pid": process.get("pid"), "host": process.get("host"),
            "argv": process.get("argv", []), "mode": report.get("mode"),
            "final": report.get("final", True),
            "launches_audited": report.get("launches_audited", 0),
            "findings": len(report.get("findings", []))}


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


def merge_reports(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
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
        if report.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} report: schema={report.get('schema')!r}")
        launches += int(report.get("launches_audited", 0))
        for op, n in report.get("launches_by_op", {}).items():
            by_op[op] = by_op.get(op, 0) + n
        if "merged_from" in report:  # a merged report merges again by its parts
            processes += report["merged_from"]
            summaries += report.get("per_process", [])
        else:
            processes.append(report.get("process", {}))
            summaries.append(process_summary(report))
        pid = report.get("process", {}).get("pid")
        for finding in report.get("findings", []):
            pids = finding.get("pids") or ([pid] if pid is not None else [])
            key = merge_key(finding)
            if key in merged:
                merged[key]["count"] += finding["count"]
                merged[key]["pids"] += [p for p in pids if p not in merged[key]["pids"]]
            else:
                merged[key] = dict(finding, pids=list(pids))
    return {
        "schema": SCHEMA,
        "merged_from": processes,
        "per_process": summaries,
        "mode": _common(r.get("mode", "off") for r in reports),
        "runtime": merged_runtime(r.get("runtime", "") for r in reports),
        "final": all(r.get("final", True) for r in reports),
        "launches_audited": launches,
        "launches_by_op": dict(sorted(by_op.items())),
        "targets": merge_targets(reports),
        "findings": list(merged.values()),
    }


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


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no report at {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a streamcheck report (expected schema {SCHEMA})")
    return data
