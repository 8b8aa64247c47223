"""``streamcheck doctor``: the environment, and whether the installed vLLM leaks its stream.

    streamcheck doctor                                  # the vLLM importable here
    streamcheck doctor --vllm-path .vllm/0.9.2/site --vllm-path .vllm/0.9.2/deps
    streamcheck doctor --json doctor.json               # same data for CI

Exit status: 0 no hazard found, 1 a hazard is affected, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console

from streamcheck.doctor.render import print_report
from streamcheck.doctor.runner import DEFAULT_TIMEOUT_S, ProbeRequest, diagnose
from streamcheck.runtime.select import BACKENDS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vllm-path", action="append", default=[], metavar="DIR",
                   help="probe the vLLM found here first (prepended to the probe's PYTHONPATH; "
                        "repeatable, or several DIRs joined with ':')")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="cuda: real GPUs; sim: the CPU stream simulator; auto (default): cuda "
                        "when torch sees a GPU")
    p.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds before the probe is killed (default {DEFAULT_TIMEOUT_S:.0f})")
    p.add_argument("--no-probe", action="store_true",
                   help="report the environment only (no vLLM probe)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def command(args: argparse.Namespace, console: Console) -> int:
    paths = [part for entry in args.vllm_path for part in entry.split(os.pathsep) if part]
    report = diagnose(ProbeRequest(vllm_path=paths, backend=args.backend,
                                   timeout=args.timeout, probe=not args.no_probe))
    print_report(console, report)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report.exit_code
