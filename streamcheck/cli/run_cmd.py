"""``streamcheck run PATTERN...``: run repro variants and check each against its expectation."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from rich.console import Console

from streamcheck.documents import RUN_SCHEMA, write_output
from streamcheck.render.junit import junit_xml
from streamcheck.render.run_progress import RunProgress
from streamcheck.render.run_table import print_dumps, run_table
from streamcheck.repro.discover import ReproFile, load, select
from streamcheck.repro.launch_cuda import ENV_ENGINE
from streamcheck.repro.runner import (
    Cancel,
    VariantResult,
    plan_world,
    run_variant,
    temp_work_dir,
)
from streamcheck.repro.spec import VARIANT_MODES
from streamcheck.runtime.select import BACKENDS, choose_backend

# Variants at once on CUDA. On 2 x H200, 3 at once gave 18/18 matches in 57 s (NaN 28-30/30,
# error 400 and the hangs as when alone); one at a time took 157 s. With 12 repros, 3 at once:
# 36/36 in 112-129 s (docs/measurements.md). Rank processes of
# concurrent variants share the GPUs; each variant still has its own NCCL communicators.
CUDA_JOBS = 3


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
    p.add_argument("--engine", choices=("models", "vllm"), default="models",
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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals(cancel: Cancel) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP stop the run: every variant's process group is killed at
    once, the partial results are still printed and written. Restores the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers live in the main thread; a caller in another one keeps its own
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: cancel.stop(signum))
                for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    if args.engine == "vllm":
        if choice.name != "cuda":
            raise ValueError("--engine vllm needs the cuda backend (real GPUs and NCCL)")
        from streamcheck.vllm_compat import vllm_version

        version = vllm_version()
        if version is None:
            raise ValueError("--engine vllm: vLLM is not importable here")
        os.environ[ENV_ENGINE] = "vllm"
        console.print(f"[bold]engine:[/] vLLM {version} (its own current_stream and pynccl)")
    work = Path(args.keep) if args.keep else temp_work_dir()
    try:
        work.mkdir(parents=True, exist_ok=True)
        probe = work / ".streamcheck-write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--keep {work}: cannot write there ({exc.strerror or exc})") from None
    variants = list(dict.fromkeys(args.variant or VARIANT_MODES))  # a repeated one runs once
    jobs = args.jobs or min(4 if choice.name == "sim" else CUDA_JOBS, os.cpu_count() or 1)
    started = time.perf_counter()
    planned: list[tuple[ReproFile, str, int, str, Any]] = []
    for repro in repros:
        spec = load(repro.path).SPEC
        world, skip = plan_world(spec, choice.name, args.gpus, choice.gpus)
        planned += [(repro, variant, world, skip, spec) for variant in variants]

    cancel = Cancel()

    def label(item: tuple[ReproFile, str, int, str, Any]) -> str:
        return f"{item[0].name} {item[1]}"

    def one(item: tuple[ReproFile, str, int, str, Any]) -> VariantResult:
        repro, variant, world, skip, spec = item
        if skip:
            return VariantResult(repro.name, variant, choice.name, 0,
                                 spec.expect[variant].describe(), "-", "skip", 0.0, skip)
        progress.started(label(item))
        return run_variant(repro, variant, choice.name, world, args.timeout, work, cancel)

    results: dict[int, VariantResult] = {}
    with (stop_on_signals(cancel), RunProgress(console, len(planned), quiet=args.quiet)
          as progress, ThreadPoolExecutor(max_workers=jobs) as pool):
        futures = {pool.submit(one, item): i for i, item in enumerate(planned)}
        for future in as_completed(futures):  # each variant is its own process group
            index = futures[future]
            results[index] = future.result()
            progress.finished(label(planned[index]), results[index].to_dict())
    ordered = [results[i] for i in range(len(planned))]  # tables and files: submission order
    rows = [r.to_dict() for r in ordered]
    shown = [r for r in rows if not args.quiet or r["verdict"] == "fail"]
    if shown:
        console.print(run_table(shown, f"streamcheck run — backend {choice.name}"))
    print_dumps(console, [r for r in rows if args.verbose or r["verdict"] == "fail"])
    failed = sum(r.verdict == "fail" for r in ordered)
    skipped = sum(r.verdict == "skip" for r in ordered)
    stopped = sum(r.verdict == "cancelled" for r in ordered)
    passed = len(ordered) - failed - skipped - stopped
    elapsed = time.perf_counter() - started
    keep_logs = bool(args.keep) or failed > 0 or cancel.signum is not None
    where = f"logs in {work}" if keep_logs else "logs removed (--keep DIR keeps them)"
    line = (f"{passed} matched, {failed} mismatched, {skipped} skipped in {elapsed:.1f}s "
            f"({choice.name}); {where}")
    stopped_by = signal.Signals(cancel.signum).name if cancel.signum is not None else None
    if stopped_by is not None:
        line = f"stopped by {stopped_by}: {stopped} variant(s) cancelled; " + line
    console.print(line)
    document: dict[str, Any] = {
        "schema": RUN_SCHEMA, "backend": choice.name, "backend_note": choice.note,
        "seconds": round(elapsed, 2), "results": rows,
        "summary": {"matched": passed, "mismatched": failed, "skipped": skipped,
                    "cancelled": stopped},
    }
    if stopped_by is not None:
        document["stopped_by"] = stopped_by
    if args.json:
        write_output(args.json, json.dumps(document, indent=2, default=str), "--json")
    if args.junit:
        write_output(args.junit, junit_xml(rows, elapsed), "--junit")
    if not keep_logs:
        shutil.rmtree(work, ignore_errors=True)
    if cancel.signum is not None:
        return 128 + cancel.signum
    return 1 if failed else 0
