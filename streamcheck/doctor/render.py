"""Rich tables for people: the environment, then one row per hazard and back end.

The verdict column is the answer; the evidence column says what was observed, so a reader can
check the verdict rather than trust it; the fix column is what to do on Monday morning.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streamcheck.doctor.hazards import BY_ID
from streamcheck.doctor.model import DoctorReport, ProbeOutcome, Verdict

VERDICT_TEXT = {
    Verdict.AFFECTED: "[bold red]AFFECTED[/]",
    Verdict.NOT_AFFECTED: "[green]not affected[/]",
    Verdict.CANNOT_TELL: "[yellow]cannot tell[/]",
}
OK_TEXT = {True: "[green]ok[/]", False: "[red]problem[/]", None: "[dim]-[/]"}


def environment_table(report: DoctorReport) -> Table:
    table = Table(title="streamcheck doctor: environment", title_justify="left")
    for column in ("item", "value", "", "detail"):
        table.add_column(column, overflow="fold")
    for item in report.environment:
        table.add_row(item.name, item.value, OK_TEXT[item.ok], item.detail or "")
    return table


def probe_line(outcome: ProbeOutcome) -> str:
    """One sentence on what was probed: version, where, through which platform and back end."""
    info = outcome.vllm
    where = {"sim": f"CPU simulator ({outcome.devices} simulated devices) standing in for "
                    "torch.cuda",
             "cuda": f"real CUDA ({outcome.devices} device(s))"}.get(outcome.backend,
                                                                    outcome.backend)
    if info.version is None:
        return f"[bold]probe[/] {escape(f'[{outcome.backend}]')}: {where}; no vLLM probed"
    parts = [f"vLLM {info.version}", f"current_stream = {info.accessor}",
             f"platform {info.platform}"]
    if info.shim:
        parts.append(info.shim)
    if info.cache_kind_by_source:
        parts.append(f"source reads as {info.cache_kind_by_source}")
    if outcome.stubs:
        parts.append(f"stand-ins for {', '.join(outcome.stubs)}")
    text = f"{where}; " + "; ".join(parts) + (f"\n  from {info.location}" if info.location else "")
    return f"[bold]probe[/] {escape(f'[{outcome.backend}]')}: {escape(text)}"


def hazards_table(report: DoctorReport) -> Table:
    table = Table(title="vLLM current_stream() hazards", title_justify="left", show_lines=True)
    for column, ratio in (("hazard", 2), ("backend", 1), ("verdict", 2), ("evidence", 7),
                          ("fix", 4)):
        table.add_column(column, overflow="fold", ratio=ratio)
    for r in report.results:
        hazard = BY_ID[r.hazard]
        table.add_row(f"{hazard.title}\n[dim]{hazard.rule}[/]", r.backend,
                      VERDICT_TEXT[r.verdict], escape(r.evidence),
                      hazard.fix if r.verdict is not Verdict.NOT_AFFECTED else "[dim]-[/]")
    return table


def targets_table(outcome: ProbeOutcome) -> Table:
    """The launch sites the audit would instrument in this environment, and what they offer."""
    table = Table(title=f"launch sites the audit instruments [{outcome.backend}]",
                  title_justify="left")
    for column in ("target", "module", "state", "methods (stream= param)", "detail"):
        table.add_column(column, overflow="fold")
    for t in outcome.targets:
        methods = ", ".join(m + ("" if m in t["stream_param"] else "*") for m in t["methods"])
        style = {"available": "green", "not installed": "dim"}.get(t["state"], "yellow")
        table.add_row(t["name"], t["module"], f"[{style}]{t['state']}[/]", escape(methods),
                      escape(t["detail"]))
    table.caption = "* resolves its stream inside the call (no stream parameter)"
    return table


def summary(report: DoctorReport) -> str:
    affected = [BY_ID[r.hazard].title for r in report.results if r.verdict is Verdict.AFFECTED]
    unknown = [BY_ID[r.hazard].title for r in report.results
               if r.verdict is Verdict.CANNOT_TELL]
    if affected:
        names = ", ".join(dict.fromkeys(affected))
        return f"[bold red]affected:[/] {names} (exit 1)"
    if not report.probes:
        return "[dim]probe skipped (--no-probe)[/]"
    if unknown:
        names = ", ".join(dict.fromkeys(unknown))
        return f"[yellow]no hazard found, but cannot tell:[/] {names} (exit 0)"
    return "[green]no hazard found[/] (exit 0)"


def print_report(console: Console, report: DoctorReport) -> None:
    console.print(environment_table(report))
    if report.probes:
        for outcome in report.probes:
            console.print(probe_line(outcome), highlight=False)
            if outcome.error:
                console.print(f"[yellow]probe error:[/] {escape(outcome.error)}",
                              highlight=False)
        console.print(hazards_table(report))
        if report.probes[0].targets:
            console.print(targets_table(report.probes[0]))
    console.print(summary(report))
