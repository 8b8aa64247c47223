"""``streamcheck report PATH...``: render saved audit reports (merged) or a saved run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from streamcheck.core.report import SCHEMA, merge_reports, read_report, write_report
from streamcheck.render.findings import print_report
from streamcheck.render.run_table import run_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="report JSON files, directories of them, or a `run --json` file")
    p.add_argument("--merge-to", metavar="PATH", help="also write the merged report here")


def command(args: argparse.Namespace, console: Console) -> int:
    files: list[Path] = []
    for raw in args.paths:
        path = Path(raw)
        files += sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"no report files under {', '.join(args.paths)}")
    first = _peek(files[0])
    if not isinstance(first, dict):
        raise ValueError(f"{files[0]} is not a streamcheck report or run")
    if first.get("schema") == "streamcheck.run/1":
        console.print(run_table(first["results"], f"saved run — backend {first['backend']}"))
        return 1 if first["summary"]["mismatched"] else 0
    reports = [read_report(f) for f in files]
    merged = reports[0] if len(reports) == 1 else merge_reports(reports)
    print_report(console, merged)
    if args.merge_to:
        write_report(merged, args.merge_to)
    return 1 if merged["findings"] else 0


def _peek(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


__all__ = ["SCHEMA", "add_arguments", "command"]
