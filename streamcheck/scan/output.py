"""Render a :class:`ScanResult` for people (rich), editors (concise), scripts (JSON), code hosts
(SARIF) and GitHub Actions (workflow-command annotations).

Renderers only read the result and the rule table's descriptions; they never compute or filter
findings, so every format shows exactly the same findings. ``rich`` is imported inside
:func:`render_rich` only, so JSON/SARIF users (CI jobs) do not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamcheck.documents import SCAN_SCHEMA
from streamcheck.scan.model import ScanResult
from streamcheck.scan.rules import RULES
from streamcheck.version import package_version

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL_NAME = "streamcheck"


def to_json(result: ScanResult) -> dict[str, Any]:
    """A plain dict named by its schema (``json.dumps`` it as is)."""
    return {
        "schema": SCAN_SCHEMA,
        "tool": {"name": TOOL_NAME, "version": package_version()},
        "files_scanned": result.files_scanned,
        "files_parsed": result.files_parsed,
        "duration_s": round(result.duration_s, 3),
        "rules": list(result.rules),
        "summary": {"findings": len(result.findings), "by_rule": result.by_rule()},
        "findings": [
            {
                "rule_id": f.rule_id,
                "rule_name": f.rule_name,
                "path": f.path,
                "line": f.line,
                "col": f.col,
                "message": f.message,
                "hint": f.hint,
            }
            for f in result.findings
        ],
        "errors": [{"path": e.path, "line": e.line, "message": e.message} for e in result.errors],
    }


def _uri(path: str) -> str:
    """SARIF wants URIs: relative paths as POSIX paths, absolute ones as ``file://`` URIs."""
    p = Path(path)
    return p.as_uri() if p.is_absolute() else p.as_posix()


def to_sarif(result: ScanResult) -> dict[str, Any]:
    """A SARIF 2.1.0 log with one run; every rule of the table is described in the driver."""
    rule_ids = list(RULES)
    rules = [
        {
            "id": rule.id,
            "name": rule.name,
            "shortDescription": {"text": rule.summary},
            "fullDescription": {"text": rule.summary},
            "help": {"text": rule.hint,
                     "markdown": f"**{rule.id} {rule.name}**: {rule.summary}\n\n"
                                 f"Fix: {rule.hint}"},
            "defaultConfiguration": {"level": "warning"},
        }
        for rule in RULES.values()
    ]
    results = [
        {
            "ruleId": f.rule_id,
            "ruleIndex": rule_ids.index(f.rule_id),
            "level": "warning",
            "message": {"text": f"{f.message} Fix: {f.hint}"},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": _uri(f.path)},
                        "region": {"startLine": f.line, "startColumn": f.col},
                    }
                }
            ],
        }
        for f in result.findings
    ]
    notifications = [
        {
            "level": "error",
            "message": {"text": e.message},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": _uri(e.path)},
                        **({"region": {"startLine": e.line}} if e.line else {}),
                    }
                }
            ],
        }
        for e in result.errors
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": TOOL_NAME, "version": package_version(),
                                    "semanticVersion": package_version(), "rules": rules}},
                "results": results,
                "invocations": [
                    {"executionSuccessful": True, "toolExecutionNotifications": notifications}
                ],
            }
        ],
    }


def to_concise(result: ScanResult) -> list[str]:
    """``path:line:col: CODE message`` per finding: the line editors and grep understand."""
    lines = [f"{f.path}:{f.line}:{f.col}: {f.rule_id} {f.message}" for f in result.findings]
    lines += [f"{e.path}:{e.line or 1}:1: error: could not scan: {e.message}"
              for e in result.errors]
    return lines


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def to_github(result: ScanResult) -> list[str]:
    """GitHub Actions workflow commands: each finding is an annotation on its line."""
    lines = []
    for f in result.findings:
        props = (f"file={_escape_property(f.path)},line={f.line},col={f.col},"
                 f"title={_escape_property(f'{f.rule_id} {f.rule_name}')}")
        lines.append(f"::warning {props}::{_escape_data(f'{f.message} Fix: {f.hint}')}")
    for e in result.errors:
        props = f"file={_escape_property(e.path)}" + (f",line={e.line}" if e.line else "")
        lines.append(f"::error {props}::{_escape_data('could not scan: ' + e.message)}")
    return lines


def summary_line(result: ScanResult) -> str:
    summary = (
        f"{len(result.findings)} finding(s) in {result.files_scanned} file(s) "
        f"({result.files_parsed} parsed) in {result.duration_s:.2f} s"
    )
    if result.errors:
        summary += f"; {len(result.errors)} file(s) could not be scanned"
    return summary


def render_rich(result: ScanResult, console: Any, *, title: str | None = None) -> None:
    """Print findings as a table, then files that could not be scanned, then a summary line.

    ``console`` is a ``rich.console.Console``; nothing else is printed anywhere.
    """
    from rich.table import Table
    from rich.text import Text

    if result.findings:
        table = Table(title=title, show_lines=True, expand=False)
        table.add_column("Location", style="cyan", overflow="fold")
        table.add_column("Rule", style="bold red", no_wrap=True)
        table.add_column("Finding and fix", overflow="fold")
        for f in result.findings:
            body = Text(f.message)
            body.append("\nFix: ", style="bold green")
            body.append(f.hint)
            table.add_row(f.location, f"{f.rule_id}\n{f.rule_name}", body)
        console.print(table)
    for error in result.errors:
        console.print(Text(f"could not scan {error.location}: {error.message}", style="yellow"))
    console.print(Text(summary_line(result),
                       style="bold red" if result.findings else "bold green"))
