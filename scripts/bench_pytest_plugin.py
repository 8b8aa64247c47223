#!/usr/bin/env python3
"""What ``pytest --streamcheck`` costs on a real suite: streamcheck's own CPU tests.

Runs the suite alternately without (A) and with (B) ``--streamcheck``, A B A B, so drift in
machine load lands on both sides, and prints each wall time, the per-pair ratios B/A and their
median (target: < 1.10). It also prints the CPU time of each run (pytest and every process it
waited for): on a shared machine other people's load moves wall time far more than the
plugin does, and CPU time shows what the plugin itself costs.

B runs without ``-x``: streamcheck's own suite provokes hazards on purpose and checks that a
process is *not* audited, so some of its tests fail under ``--streamcheck`` by design (they are
listed); stopping at the first would measure a shorter run. A keeps ``-x``: a failure there
means the suite is broken and the measurement is void (exit 2). With A green, ``-x`` changes
nothing about A's time.

    python scripts/bench_pytest_plugin.py [--rounds 2] [--keep-going] [-- EXTRA PYTEST ARGS]

Extra pytest arguments after ``--`` go to both variants, e.g. ``-- --deselect NODEID`` for a
test that is broken at the moment, so the baseline can be green. ``--keep-going`` drops ``-x``
from A too and measures anyway when the baseline has failures (both sides then run every
test; the failures are listed for each side).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests",
        "--ignore=tests/pytest_plugin"]
VARIANTS = {"A": [*BASE, "-x"], "B": [*BASE, "--streamcheck"]}
TARGET = 1.10


@dataclass
class Run:
    variant: str
    wall_s: float
    cpu_s: float
    returncode: int
    summary: str
    failed: list[str]


def run_once(variant: str, extra: list[str], keep_going: bool) -> Run:
    env = {k: v for k, v in os.environ.items()
           if k not in ("STREAMCHECK", "STREAMCHECK_PYTEST", "STREAMCHECK_REPORT_DIR",
                        "PYTEST_ADDOPTS")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    command = [a for a in VARIANTS[variant] if not (keep_going and a == "-x")]
    proc = subprocess.run([*command, *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else "(no output)"
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.MULTILINE)
    return Run(variant, wall, cpu, proc.returncode, summary, failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="A/B pairs to run (default 2)")
    parser.add_argument("--keep-going", action="store_true",
                        help="no -x for A either; measure even if the baseline has failures")
    parser.add_argument("extra", nargs="*", help="pytest arguments for both (after --)")
    args = parser.parse_args(argv)
    for variant in ("A", "B"):
        command = [a for a in VARIANTS[variant][1:] if not (args.keep_going and a == "-x")]
        print(f"{variant}: {' '.join([*command, *args.extra])}")
    runs: list[Run] = []
    for i in range(args.rounds):
        for variant in ("A", "B"):
            run = run_once(variant, args.extra, args.keep_going)
            runs.append(run)
            print(f"round {i + 1} {variant}: wall {run.wall_s:6.1f} s  cpu {run.cpu_s:6.1f} s  "
                  f"rc={run.returncode}  "
                  f"{run.summary}", flush=True)
            if variant == "A" and run.returncode != 0 and not args.keep_going:
                print("failing: " + ", ".join(run.failed), file=sys.stderr)
                print("baseline run failed: the suite is broken, no measurement", file=sys.stderr)
                return 2
    for label, attr in (("wall", "wall_s"), ("cpu", "cpu_s")):
        a = [getattr(r, attr) for r in runs if r.variant == "A"]
        b = [getattr(r, attr) for r in runs if r.variant == "B"]
        ratios = [rb / ra for ra, rb in zip(a, b, strict=True)]
        median_ratio = statistics.median(ratios)
        print(f"{label}: A median {statistics.median(a):.1f} s, B median "
              f"{statistics.median(b):.1f} s; B/A per pair "
              f"{', '.join(f'{r:.3f}' for r in ratios)}; median ratio {median_ratio:.3f} "
              f"(target < {TARGET:.2f}: {'met' if median_ratio < TARGET else 'NOT met'})")
    failed_under_a = {name for r in runs if r.variant == "A" for name in r.failed}
    if failed_under_a:
        print(f"{len(failed_under_a)} test(s) fail without --streamcheck (not the plugin's):")
        for name in sorted(failed_under_a):
            print(f"  {name}")
    failed_under_b = {name for r in runs if r.variant == "B" for name in r.failed}
    if failed_under_b - failed_under_a:
        print(f"{len(failed_under_b - failed_under_a)} more fail under --streamcheck "
              "(by design, see above):")
        for name in sorted(failed_under_b - failed_under_a):
            print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
