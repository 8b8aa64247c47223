"""``streamcheck list``: the repros, what each models, GPUs needed and what each variant shows."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from streamcheck.documents import LIST_SCHEMA, write_output
from streamcheck.repro.discover import all_repros, load
from streamcheck.repro.spec import VARIANT_MODES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repro-dir", action="append", metavar="DIR",
                   help="another directory of repro_*.py files (repeatable)")
    p.add_argument("--json", metavar="PATH",
                   help="write the list as JSON (schema streamcheck.list/1); '-' for stdout")
    p.add_argument("--names", action="store_true",
                   help="print only the names, one per line (scripts, shell completion)")


def listing(repro_dirs: list[str] | None) -> dict[str, Any]:
    repros = []
    for repro in all_repros(repro_dirs):
        spec = load(repro.path).SPEC
        repros.append({"name": spec.name, "path": str(repro.path), "hazard": spec.hazard,
                       "summary": spec.summary, "min_gpus": spec.min_gpus,
                       "max_world": spec.max_world,
                       "expect": {v: spec.expect[v].describe() for v in VARIANT_MODES},
                       "mechanism": spec.mechanism,
                       "reports": [{"ref": r.ref, "url": r.url, "title": r.title, "fix": r.fix}
                                   for r in spec.reports]})
    return {"schema": LIST_SCHEMA, "repros": repros}


def command(args: argparse.Namespace, console: Console) -> int:
    if args.names:
        for repro in all_repros(args.repro_dir):
            print(repro.name)
        return 0
    document = listing(args.repro_dir)
    if args.json:
        write_output(args.json, json.dumps(document, indent=2), "--json")
        if args.json == "-":
            return 0
    table = Table(title="streamcheck repros, by hazard")
    for column in ("hazard", "repro", "reproduces", "GPUs", "models", "buggy", "fixed",
                   "guarded"):
        table.add_column(column, overflow="fold", no_wrap=column == "repro")
    previous = None
    for r in sorted(document["repros"], key=lambda r: (r["hazard"], r["name"])):
        gpus = f"{r['min_gpus']}" + (f"-{r['max_world']}" if r["max_world"] > r["min_gpus"]
                                     else "")
        hazard = r["hazard"] if r["hazard"] != previous else ""
        if r["hazard"] != previous and previous is not None:
            table.add_section()
        previous = r["hazard"]
        refs = ", ".join(x["ref"] for x in r["reports"]) or "-"
        table.add_row(hazard, r["name"], refs, gpus, r["summary"],
                      *(r["expect"][v] for v in VARIANT_MODES))
    console.print(table)
    return 0
