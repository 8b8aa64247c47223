"""The session's report: each process's part, and the merge the controller writes and shows.

Every process that ran tests builds its own report (the core's ``streamcheck.report/1`` plus
a ``tests`` mapping nodeid -> findings). Without xdist that one report is the session's; with
xdist each worker ships its own through ``workeroutput`` and the controller merges them, the
same way ``streamcheck report`` merges per-process files, so both paths produce one shape.
"""

from __future__ import annotations

from typing import Any

from streamcheck.core.report import AuditReport, build_report, merge_reports
from streamcheck.pytest_support.state import SessionState
from streamcheck.wrappers import speedups

WORKER_KEY = "streamcheck"


def process_report(state: SessionState) -> AuditReport:
    """This process's part of the session report: the findings by test, not the auditor's
    (several tests may share one)."""
    tests = {r.nodeid: r.to_dicts() for r in state.records}
    unattributed = state.unattributed.to_dicts()
    auditor = state.audit.auditor
    report = build_report(
        (), auditor.coverage if auditor is not None else None,
        mode=state.settings.mode.value,
        runtime=state.audit.runtime,
        tests_audited=state.items_audited,
        tests=tests,
        unattributed=unattributed,
        # how this process read current streams (natively once proven, or through torch)
        **({"stream_reads": speedups.stream_reads()} if auditor is not None else {}),
    )
    report.launches_audited = state.audit.launches + state.child_launches
    report.findings = [f for found in tests.values() for f in found] + unattributed
    return report


def session_report(parts: list[AuditReport], mode: str) -> AuditReport:
    """Merge the parts (one per process that ran tests) into the session's report."""
    merged = merge_reports(parts)
    tests: dict[str, list[dict[str, Any]]] = {}
    for part in parts:
        for nodeid, found in part.extra.get("tests", {}).items():
            tests.setdefault(nodeid, []).extend(found)
    merged.mode = mode
    merged.extra.update(
        tests_audited=sum(int(p.extra.get("tests_audited", 0)) for p in parts),
        tests=tests,
        unattributed=[f for p in parts for f in p.extra.get("unattributed", [])],
        processes=len(parts),
    )
    return merged
