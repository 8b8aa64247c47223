"""``streamcheck run PATTERN...``: run repro variants and check each against its expectation.

This module reads the options, builds a :class:`~streamcheck.repro.session.ReproSession`,
renders the :class:`~streamcheck.repro.run_report.RunReport` it returns and turns it into the
exit code; planning, running and counting are the session's.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from rich.console import Console

from streamcheck.documents import write_output
from streamcheck.render.junit import junit_xml
from streamcheck.render.run_progress import RunProgress
from streamcheck.render.run_table import print_dumps, run_table, summary_line
from streamcheck.repro.discover import select
from streamcheck.repro.session import ENGINES, ReproSession
from streamcheck.repro.spec import VARIANT_MODES
from streamcheck.runtime.procgroup import stop_on_signals
from streamcheck.runtime.select import BACKENDS, choose_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("patterns", nargs="+", metavar="PATTERN",
                   help="repro names or shell-style globs, e.g. 'repro_*'")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="cuda, sim (CPU simulator) or auto: cuda when GPUs and NCCL are usable")
    p.add_argument("--variant", action="append", choices=sorted(VARIANT_MODES),
                   help="run only these variants (repeatable; default: all three)")
    p.add_argument("--gpus", type=_positive_int, help="ranks to use (default: as the repro asks)")
    p.add_argument("--timeout", type=_positive_float,
                   help="seconds per variant before its processes are dumped and killed")
    p.add_argument("--json", metavar="PATH",
                   help="write the results as JSON (schema streamcheck.run/1); '-' for stdout, "
                        "the rest then goes to stderr")
    p.add_argument("--junit", metavar="PATH", help="write the results as JUnit XML ('-': stdout)")
    p.add_argument("--repro-dir", action="append", metavar="DIR",
                   help="another directory of repro_*.py files (repeatable)")
    p.add_argument("--keep", metavar="DIR", help="keep rank logs here (default: a temp dir)")
    p.add_argument("--jobs", type=_positive_int,
                   help="variants run at once, each in its own processes (default: CPU count, "
                        "up to 4, on sim; 3 on cuda, where they share the GPUs: measured on "
                        "2 x H200 with the same verdicts and symptoms as one at a time; 1 "
                        "isolates every variant)")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true",
                       help="also print the stacks of processes that hung as expected (a "
                            "mismatch's are always printed)")
    noise.add_argument("-q", "--quiet", action="store_true",
                       help="print only mismatches and the summary line")
    p.add_argument("--engine", choices=ENGINES, default="models",
                   help="models: faithful models of the engines' caches (default); vllm: the "
                        "installed vLLM's own current_stream and PyNcclCommunicator (cuda only)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def check_output_path(path: str | None, what: str) -> None:
    """Check an output path before the run, so a typo costs seconds, not the whole run."""
    if path is None or path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{what} {path}: is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{what} {path}: directory {parent} is not writable")


def command(args: argparse.Namespace, console: Console) -> int:
    if args.json == "-" and args.junit == "-":
        raise ValueError("--json - and --junit -: only one of them can go to stdout")
    check_output_path(args.json, "--json")
    check_output_path(args.junit, "--junit")
    repros = select(args.patterns, args.repro_dir)
    choice = choose_backend(args.backend)
    console.print(f"[bold]backend:[/] {choice.name} — {choice.note}")
    session = ReproSession(repros, choice, variants=args.variant, gpus=args.gpus,
                           timeout=args.timeout, jobs=args.jobs, engine=args.engine,
                           keep_dir=Path(args.keep) if args.keep else None)
    if session.engine_version is not None:
        console.print(f"[bold]engine:[/] vLLM {session.engine_version} (its own "
                      "current_stream and pynccl)")
    with (stop_on_signals(session.cancel),
          RunProgress(console, len(session.plan), quiet=args.quiet) as progress):
        report = session.run(progress)
    rows = report.rows()
    shown = [r for r in rows if not args.quiet or r["verdict"] == "fail"]
    if shown:
        console.print(run_table(shown, f"streamcheck run — backend {report.backend}"))
    print_dumps(console, [r for r in rows if args.verbose or r["verdict"] == "fail"])
    console.print(summary_line(report))
    if args.json:
        write_output(args.json, report.to_text(), "--json")
    if args.junit:
        write_output(args.junit, junit_xml(rows, report.seconds), "--junit")
    return report.exit_code
