"""The ``streamcheck scan`` sub-command: argument definitions and the command body.

Contract with the CLI front end (which owns the parser and the console):

- ``add_scan_arguments(parser)`` adds to a (sub)parser: positional ``targets`` (one or more
  paths or installed package names), ``--output-format``, ``--json PATH``, ``--sarif PATH``
  (``-``: stdout), ``--select RULES``, ``--ignore RULES`` (ids, names or id prefixes;
  comma-separated and/or repeated), ``--exclude GLOBS``, ``--config PYPROJECT`` and
  ``--exit-zero``.
- ``run_scan_command(args, console)`` reads ``[tool.streamcheck.scan]``
  (:mod:`streamcheck.scan.config`), scans, prints the findings on stdout in the chosen format
  (``full`` is a rich table on ``console``), writes the requested JSON/SARIF files, and returns
  the exit code: ``0`` no findings (or ``--exit-zero``), ``1`` findings, ``2`` bad usage or
  configuration (unknown target or rule; nothing scanned). Files that cannot be parsed are
  reported but do not change the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from streamcheck.documents import write_output
from streamcheck.scan.config import ScanConfig, ScanConfigError, load_scan_config
from streamcheck.scan.engine import scan_paths
from streamcheck.scan.output import (
    render_rich,
    summary_line,
    to_concise,
    to_github,
    to_json,
    to_sarif,
)
from streamcheck.scan.resolve import ScanTargetError, resolve_targets
from streamcheck.scan.rules import RULES, UnknownRuleError

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
FORMATS = ("full", "concise", "json", "sarif", "github")


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``scan`` options to ``parser`` (see the module docstring for the names)."""
    rules = ", ".join(f"{r.id} {r.name}" for r in RULES.values())
    parser.add_argument(
        "targets", nargs="+", metavar="PATH|PACKAGE",
        help="files, directories or installed package names (located, never imported)",
    )
    parser.add_argument(
        "--output-format", choices=FORMATS, default="full",
        help="full: a table (default); concise: path:line:col: CODE message; json or sarif: "
             "the document on stdout; github: GitHub Actions annotations",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the findings as JSON")
    parser.add_argument("--sarif", metavar="PATH", help="also write a SARIF 2.1.0 log")
    parser.add_argument(
        "--select", action="append", metavar="RULES",
        help=f"only these rules (ids, names or prefixes, comma-separated): {rules}",
    )
    parser.add_argument(
        "--ignore", action="append", metavar="RULES", help="leave these rules out",
    )
    parser.add_argument(
        "--exclude", action="append", metavar="GLOBS",
        help="leave out files matching these globs (comma-separated; added to the config's)",
    )
    parser.add_argument(
        "--config", metavar="PYPROJECT",
        help="read [tool.streamcheck.scan] from this file (default: the nearest "
             "pyproject.toml from the working directory up)",
    )
    parser.add_argument("--exit-zero", action="store_true",
                        help="exit 0 even when there are findings (report-only CI jobs)")


def _write(path: str, payload: dict[str, Any], flag: str) -> None:
    write_output(path, json.dumps(payload, indent=2) + "\n", flag, make_parents=True)


def project_config(explicit: str | None) -> ScanConfig:
    """``[tool.streamcheck.scan]`` of ``explicit`` or of the nearest pyproject.toml."""
    from streamcheck.core.modes import ConfigError
    from streamcheck.settings import find_pyproject, read_table

    if explicit is not None:
        path: Path | None = Path(explicit)
        if not path.is_file():
            raise ScanConfigError(f"--config {explicit}: no such file")
    else:
        path = find_pyproject(Path.cwd())
    if path is None:
        return ScanConfig()
    try:
        table = read_table(path)
    except ConfigError as exc:
        raise ScanConfigError(str(exc)) from None
    return load_scan_config(table.get("scan", {}), path)


def run_scan_command(args: argparse.Namespace, console: Any) -> int:
    """Run ``streamcheck scan``; return 0 (clean), 1 (findings) or 2 (usage error)."""
    try:
        config = project_config(args.config).with_arguments(args.select, args.ignore,
                                                             args.exclude)
        paths = resolve_targets(args.targets)
        result = scan_paths(paths, select=config.select, ignore=config.ignore,
                            exclude=config.excluded if config.exclude else None,
                            rules_off=config.ignored_rules if config.per_file_ignores else None)
    except (ScanTargetError, UnknownRuleError, ScanConfigError) as exc:
        console.print(f"streamcheck scan: {exc}", style="bold red", markup=False, highlight=False)
        return EXIT_USAGE
    fmt = args.output_format
    if fmt == "full":
        render_rich(result, console, title="streamcheck scan")
    elif fmt in ("concise", "github"):
        lines = to_concise(result) if fmt == "concise" else to_github(result)
        sys.stdout.write("".join(line + "\n" for line in lines))
        console.print(summary_line(result), markup=False, highlight=False)
    else:  # stdout carries the document alone; main sends the console (summary) to stderr
        _write("-", to_json(result) if fmt == "json" else to_sarif(result), "--output-format")
        console.print(summary_line(result), markup=False, highlight=False)
    if args.json:
        _write(args.json, to_json(result), "--json")
    if args.sarif:
        _write(args.sarif, to_sarif(result), "--sarif")
    if args.exit_zero:
        return EXIT_CLEAN
    return EXIT_FINDINGS if result.findings else EXIT_CLEAN
