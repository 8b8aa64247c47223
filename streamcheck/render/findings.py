"""The people's view of an audit report: a summary table, then each finding in full."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from streamcheck.core.report import AuditReport
from streamcheck.render.coverage import (
    process_notes,
    stream_reads_line,
    targets_table,
    zero_launch_warning,
)


def print_report(console: Console, report: AuditReport) -> None:
    findings = report.findings
    table = Table(title=f"streamcheck report ({report.mode} mode, "
                        f"{report.launches_audited} launches audited)")
    for column in ("rule", "op", "thread", "stream", "count"):
        table.add_column(column)
    for f in findings:
        launch = f["launch"]
        stream = launch["stream"]
        table.add_row(f["rule"], launch["op"], launch["thread"]["name"],
                      f"{stream['stream_id']:#x}@{stream['device']}", str(f["count"]))
    console.print(table)
    for f in findings:
        console.rule(f"[bold]{f['rule']}[/]")
        console.print(f["text"], markup=False, highlight=False)
    if report.targets:
        console.print(targets_table(report.targets))
    reads = stream_reads_line(report)
    if reads:
        console.print(reads, markup=False, highlight=False)
    for note in process_notes(report):
        console.print(f"[yellow]{note}[/]")
    warning = zero_launch_warning(report)
    if warning:
        console.print(f"[bold red]{warning}[/]")
    elif not findings:
        console.print(f"no findings in {report.launches_audited} launches audited")
