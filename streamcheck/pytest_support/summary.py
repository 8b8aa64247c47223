"""The terminal summary: findings by test, rendered from the session report (never computed).

It reads the same :class:`~streamcheck.core.report.AuditReport` the ``--streamcheck-report``
file is written from, so a run with xdist and one without print the same thing. Rich colours
it when the terminal takes markup; otherwise (a pipe, CI logs, pytester) plain lines, which are
easier to grep. Findings are grouped under each test's id rather than put in a table column, so
long ids stay whole on narrow terminals.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from streamcheck.core.report import AuditReport
from streamcheck.render.coverage import plain_lines

OUTSIDE = "(outside any test)"


def rows(report: AuditReport) -> list[tuple[str, str, int, str, str, str]]:
    """(test, rule, count, op, where, verdict) for every finding, tests in report order."""
    out = []
    groups = list(report.extra.get("tests", {}).items())
    if report.extra.get("unattributed"):
        groups.append((OUTSIDE, report.extra["unattributed"]))
    for nodeid, found in groups:
        for f in found:
            child = f.get("child")
            where = f"child pid {child['pid']}" if child else f["launch"]["thread"]["name"]
            verdict = "allowed" if f.get("allowed") else ("-" if nodeid == OUTSIDE else "FAILED")
            out.append((nodeid, f["rule"], int(f.get("count", 1)), f["launch"]["op"], where,
                        verdict))
    return out


def headline(report: AuditReport) -> str:
    found = rows(report)
    tests = {r[0] for r in found}
    text = (f"{report.mode} mode, {report.launches_audited} launches "
            f"audited in {report.extra.get('tests_audited', 0)} tests")
    if report.extra.get("processes", 1) > 1:
        text += f" on {report.extra['processes']} workers"
    if not found:
        return text + ": no findings"
    failing = sum(1 for r in found if r[5] == "FAILED")
    return (f"{text}: {len(found)} finding(s) in {len(tests)} test(s), "
            f"{failing} failing, {len(found) - failing} not")


def render(terminalreporter: Any, report: AuditReport, written_to: Path | None) -> None:
    terminalreporter.write_sep("=", "streamcheck")
    terminalreporter.write_line(headline(report))
    for line in plain_lines(report):
        terminalreporter.write_line(line, red=line.startswith("WARNING"))
    found = rows(report)
    if found:
        if terminalreporter.hasmarkup:
            terminalreporter.write(_rich_table(found, _width(terminalreporter.config)))
        else:
            for line in _plain(found):
                terminalreporter.write_line(line)
    if written_to is not None:
        terminalreporter.write_line(f"streamcheck report written to {written_to}")


def _plain(found: list[tuple[str, str, int, str, str, str]]) -> list[str]:
    lines: list[str] = []
    last = None
    for nodeid, rule, count, op, where, verdict in found:
        if nodeid != last:
            lines.append(nodeid)
            last = nodeid
        lines.append(f"    {rule} x{count}  {op}  in {where}  [{verdict}]")
    return lines


def _width(config: pytest.Config) -> int:
    try:
        return int(config.get_terminal_writer().fullwidth)
    except Exception:  # a reporter without a writer: any sane width will do
        return 100


def _rich_table(found: list[tuple[str, str, int, str, str, str]], width: int) -> str:
    """Findings grouped under each test's id: the ids stay whole on a narrow terminal."""
    from rich.console import Console, Group
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    parts: list[Text | Padding] = []
    for nodeid in dict.fromkeys(row[0] for row in found):
        grid = Table.grid(padding=(0, 2))
        for _ in range(5):
            grid.add_column(no_wrap=True)
        for _, rule, count, op, where, verdict in (r for r in found if r[0] == nodeid):
            style = "bold red" if verdict == "FAILED" else "dim"
            grid.add_row(Text(rule, style="yellow"), f"x{count}", op, f"in {where}",
                         Text(verdict, style=style))
        parts += [Text(nodeid, style="bold"), Padding(grid, (0, 0, 0, 4), expand=False)]
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=True, width=width).print(Group(*parts))
    return buffer.getvalue()
