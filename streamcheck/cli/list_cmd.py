"""``streamcheck list``: the repros, what each models, GPUs needed and what each variant shows."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from streamcheck.repro.discover import all_repros, load


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repro-dir", action="append", metavar="DIR",
                   help="another directory of repro_*.py files (repeatable)")


def command(args: argparse.Namespace, console: Console) -> int:
    table = Table(title="streamcheck repros")
    for column in ("repro", "hazard", "GPUs", "models", "buggy", "fixed", "guarded"):
        table.add_column(column, overflow="fold")
    for repro in all_repros(args.repro_dir):
        spec = load(repro.path).SPEC
        gpus = f"{spec.min_gpus}" + (f"-{spec.max_world}" if spec.max_world > spec.min_gpus else "")
        table.add_row(spec.name, spec.hazard, gpus, spec.summary,
                      *(spec.expect[v].describe() for v in ("buggy", "fixed", "guarded")))
    console.print(table)
    return 0
