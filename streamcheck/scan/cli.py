"""The ``streamcheck scan`` sub-command: argument definitions and the command body.

Contract with the CLI front end (which owns the parser and the console):

- ``add_scan_arguments(parser)`` adds to a (sub)parser: positional ``targets`` (one or more
  paths or installed package names), ``--json PATH``, ``--sarif PATH``, ``--select RULES`` and
  ``--ignore RULES`` (ids, names or id prefixes; comma-separated and/or repeated). The parsed
  namespace then has ``targets``, ``json``, ``sarif``, ``select`` and ``ignore``.
- ``run_scan_command(args, console)`` scans, prints a rich table on ``console``, writes the
  requested JSON/SARIF files, and returns the process exit code:
  ``0`` no findings, ``1`` findings, ``2`` bad usage (unknown target or rule; nothing scanned).
  Files that cannot be parsed are reported but do not change the exit code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from streamcheck.scan.engine import scan_paths
from streamcheck.scan.output import render_rich, to_json, to_sarif
from streamcheck.scan.resolve import ScanTargetError, resolve_targets
from streamcheck.scan.rules import RULES, UnknownRuleError

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``scan`` options to ``parser`` (see the module docstring for the names)."""
    rules = ", ".join(f"{r.id} {r.name}" for r in RULES.values())
    parser.add_argument(
        "targets", nargs="+", metavar="PATH|PACKAGE",
        help="files, directories or installed package names (located, never imported)",
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


def _write(path: str, payload: dict[str, Any]) -> None:
    target = Path(path)
    if target.parent != Path():
        target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def run_scan_command(args: argparse.Namespace, console: Any) -> int:
    """Run ``streamcheck scan``; return 0 (clean), 1 (findings) or 2 (usage error)."""
    try:
        paths = resolve_targets(args.targets)
        result = scan_paths(paths, select=args.select, ignore=args.ignore)
    except (ScanTargetError, UnknownRuleError) as exc:
        console.print(f"streamcheck scan: {exc}", style="bold red", markup=False, highlight=False)
        return EXIT_USAGE
    render_rich(result, console, title="streamcheck scan")
    if args.json:
        _write(args.json, to_json(result))
    if args.sarif:
        _write(args.sarif, to_sarif(result))
    return EXIT_FINDINGS if result.findings else EXIT_CLEAN
