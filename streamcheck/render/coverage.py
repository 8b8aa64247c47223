"""What an audit checked, rendered beside its findings: targets, launches, silent processes.

"No findings" is only worth something next to what was audited. Every rendering of a report
(``streamcheck report``, the pytest summary) shows the targets with their launch counts and,
prominently, an audit that saw zero launches, so it is never mistaken for a clean one.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from streamcheck.core.coverage import INSTRUMENTED, STATE_RANK
from streamcheck.core.report import AuditReport

ZERO = ("0 launches audited: the audit was on but no instrumented launch site was called, so "
        "'no findings' here does NOT mean checked and clean")


def zero_launch_warning(report: AuditReport) -> str | None:
    """The warning for a report that audited nothing, with what it was watching for."""
    if report.launches_audited or report.mode == "off":
        return None
    watched = [t["name"] for t in report.targets if t["state"] == INSTRUMENTED]
    where = f" (instrumented: {', '.join(watched)})" if watched else " (no target instrumented)"
    return f"WARNING: {ZERO}{where}"


def process_notes(report: AuditReport) -> list[str]:
    """Processes of a merged report that audited nothing, or whose report was cut short."""
    notes = []
    processes = report.per_process
    silent = [p for p in processes if not p.get("launches_audited")]
    if silent and len(processes) > 1:
        names = ", ".join(f"pid {p['pid']} ({_argv(p)})" for p in silent[:8])
        notes.append(f"{len(silent)} of {len(processes)} processes audited 0 launches: {names}")
    cut = [p for p in processes if p.get("final") is False]
    if cut:
        names = ", ".join(f"pid {p['pid']}" for p in cut[:8])
        notes.append(f"{len(cut)} report(s) written before their process ended (no clean exit "
                     f"seen; counts are as of the last write): {names}")
    return notes


def stream_reads_line(report: AuditReport) -> str | None:
    """How the audited processes read their threads' current streams (the written reports'
    ``stream_reads``: natively once proven, or through torch), grouped by answer; None where
    no report says."""
    if report.merged_from is None:
        reads = report.extra.get("stream_reads")
        return f"current streams read: {reads}" if reads else None
    by_answer: dict[str, list[str]] = {}
    for p in report.per_process:
        if p.get("stream_reads") and p.get("launches_audited"):
            by_answer.setdefault(p["stream_reads"], []).append(str(p["pid"]))
    if not by_answer:
        return None
    return "current streams read: " + "; ".join(
        f"{answer} (pid {', '.join(pids[:8])}{' …' if len(pids) > 8 else ''})"
        for answer, pids in sorted(by_answer.items()))


def _argv(process: dict[str, Any]) -> str:
    argv = process.get("argv") or ["?"]
    return " ".join(str(a) for a in argv)[:60]


def target_rows(targets: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(target, state, launches, detail) per target (a report's ``targets``, or a probe's),
    the instrumented ones first."""
    rows = []
    for t in sorted(targets, key=lambda t: (STATE_RANK.get(t["state"], 3), t["name"])):
        detail = t.get("detail", "")
        if t["state"] == INSTRUMENTED:
            methods = t.get("methods", [])
            detail = f"{len(methods)} method(s)" + (f": {', '.join(methods[:6])}" if methods
                                                    else "")
            detail += " …" if len(methods) > 6 else ""
        launches = str(t.get("launches", 0)) if t["state"] == INSTRUMENTED else "-"
        rows.append((t["name"], t["state"], launches, detail))
    return rows


def targets_table(targets: list[dict[str, Any]]) -> Table:
    table = Table(title="what was audited", title_justify="left")
    for column in ("target", "state", "launches", "detail"):
        table.add_column(column, overflow="fold")
    for row in target_rows(targets):
        table.add_row(*row)
    return table


def plain_lines(report: AuditReport) -> list[str]:
    """The same, as plain lines (pytest summary, logs)."""
    lines = []
    warning = zero_launch_warning(report)
    if warning:
        lines.append(warning)
    audited = [f"{name} {launches}" for name, state, launches, _ in target_rows(report.targets)
               if state == INSTRUMENTED]
    if audited:
        lines.append("launches by target: " + ", ".join(audited))
    reads = stream_reads_line(report)
    return lines + ([reads] if reads else []) + process_notes(report)
