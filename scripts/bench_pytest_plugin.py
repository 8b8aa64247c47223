#!/usr/bin/env python3
"""What ``pytest --streamcheck`` costs on a real suite: streamcheck's own CPU tests.

Runs the suite alternately without (A) and with (B) ``--streamcheck``, A B A B, so drift in
machine load lands on both sides, and prints each wall time, the per-pair ratios B/A and their
median (target: < 1.10).

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
    returncode: int
    summary: str
    failed: list[str]


def run_once(variant: str, extra: list[str], keep_going: bool) -> Run:
    env = {k: v for k, v in os.environ.items()
           if k not in ("STREAMCHECK", "STREAMCHECK_PYTEST", "STREAMCHECK_REPORT_DIR",
                        "PYTEST_ADDOPTS")}
    start = time.perf_counter()
    command = [a for a in VARIANTS[variant] if not (keep_going and a == "-x")]
    proc = subprocess.run([*command, *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else "(no output)"
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.MULTILINE)
    return Run(variant, wall, proc.returncode, summary, failed)


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
            print(f"round {i + 1} {variant}: {run.wall_s:7.1f} s  rc={run.returncode}  "
                  f"{run.summary}", flush=True)
            if variant == "A" and run.returncode != 0 and not args.keep_going:
                print("failing: " + ", ".join(run.failed), file=sys.stderr)
                print("baseline run failed: the suite is broken, no measurement", file=sys.stderr)
                return 2
    a = [r.wall_s for r in runs if r.variant == "A"]
    b = [r.wall_s for r in runs if r.variant == "B"]
    ratios = [rb / ra for ra, rb in zip(a, b, strict=True)]
    median_ratio = statistics.median(ratios)
    print(f"A median {statistics.median(a):.1f} s, B median {statistics.median(b):.1f} s")
    print(f"B/A per pair: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"median ratio {median_ratio:.3f} (target < {TARGET:.2f}: "
          f"{'met' if median_ratio < TARGET else 'NOT met'})")
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
