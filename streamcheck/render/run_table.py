"""The people's view of a repro run: one rich table row per variant."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from streamcheck.repro.run_report import RunReport

VERDICT_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow", "cancelled": "yellow"}


def run_table(results: Iterable[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for column in ("repro", "variant", "backend", "ranks", "expected", "observed", "verdict", "s"):
        table.add_column(column, overflow="fold")
    for r in results:
        style = VERDICT_STYLE.get(r["verdict"], "")
        verdict = r["verdict"].upper() if r["verdict"] != "fail" else "MISMATCH"
        observed = {"fail": f"{r['observed']} — {r['reason']}", "skip": r["reason"],
                    "cancelled": r["reason"]}.get(r["verdict"], r["observed"])
        table.add_row(r["repro"], r["variant"], r["backend"], str(r["world_size"]), r["expected"],
                      observed, f"[{style}]{verdict}[/]", f"{r['seconds']:.1f}")
    return table


def print_dumps(console: Console, results: Iterable[dict[str, Any]]) -> None:
    """Stacks of processes that hung, so the reader sees where they were stuck."""
    for r in results:
        for pid, text in r.get("dumps", {}).items():
            console.rule(f"{r['repro']} {r['variant']} [{r['backend']}]: hung process {pid}")
            console.print(text.rstrip() or "(empty dump)", markup=False, highlight=False)


def summary_line(report: RunReport) -> str:
    """The last line of a run: the counts, the time, the backend, where the logs are."""
    where = (f"logs in {report.work_dir}" if report.logs_kept
             else "logs removed (--keep DIR keeps them)")
    line = (f"{report.matched} matched, {report.mismatched} mismatched, {report.skipped} "
            f"skipped in {report.seconds:.1f}s ({report.backend}); {where}")
    if report.stopped_by is not None:
        line = f"stopped by {report.stopped_by}: {report.cancelled} variant(s) cancelled; " + line
    return line
