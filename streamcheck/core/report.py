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
from pathlib import Path
from typing import Any

from streamcheck.core.auditor import Auditor, FindingEntry
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
            "thread_device": launch.thread_device,
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


def build_report(auditor: Auditor | None, entries: Iterable[FindingEntry] | None = None,
                 **extra: Any) -> dict[str, Any]:
    """One process's report. ``entries`` overrides the auditor's (e.g. one test's findings)."""
    if entries is None:
        entries = auditor.entries() if auditor is not None else []
    findings = [finding_to_dict(e.finding, e.count) for e in entries]
    return {
        "schema": SCHEMA,
        "process": {
            "pid": os.getpid(), "host": socket.gethostname(), "argv": list(sys.argv),
            "time": time.time(),
        },
        "mode": auditor.mode.value if auditor is not None else "off",
        "runtime": auditor.runtime if auditor is not None else "",
        "launches_audited": auditor.launches if auditor is not None else 0,
        "findings": findings,
        **extra,
    }


def merge_reports(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Combine per-process reports; identical findings (same rule, op, text) add their counts."""
    reports = list(reports)
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    launches = 0
    for report in reports:
        if report.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} report: schema={report.get('schema')!r}")
        launches += int(report.get("launches_audited", 0))
        for finding in report.get("findings", []):
            key = (finding["rule"], finding["launch"]["op"], finding["message"])
            if key in merged:
                merged[key]["count"] += finding["count"]
            else:
                merged[key] = dict(finding, pid=report["process"]["pid"])
    return {
        "schema": SCHEMA,
        "merged_from": [r["process"] for r in reports],
        "mode": reports[0]["mode"] if reports else "off",
        "launches_audited": launches,
        "findings": list(merged.values()),
    }


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
