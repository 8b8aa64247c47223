"""``streamcheck run PATTERN...``: run repro variants and check each against its expectation."""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console

from streamcheck.render.junit import write_junit
from streamcheck.render.run_table import print_dumps, run_table
from streamcheck.repro.discover import ReproFile, load, select
from streamcheck.repro.launch_cuda import ENV_ENGINE
from streamcheck.repro.runner import VariantResult, plan_world, run_variant, temp_work_dir
from streamcheck.repro.spec import VARIANT_MODES
from streamcheck.runtime.select import BACKENDS, choose_backend

RUN_SCHEMA = "streamcheck.run/1"
# Variants at once on CUDA. On 2 x H200, 3 at once gave 18/18 matches in 57 s (NaN 28-30/30,
# error 400 and the hangs as when alone); one at a time took 157 s. Rank processes of
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
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--junit", metavar="PATH", help="write the results as JUnit XML")
    p.add_argument("--repro-dir", action="append", metavar="DIR",
                   help="another directory of repro_*.py files (repeatable)")
    p.add_argument("--keep", metavar="DIR", help="keep rank logs here (default: a temp dir)")
    p.add_argument("--jobs", type=_positive_int,
                   help="variants run at once, each in its own processes (default: CPU count, "
                        "up to 4, on sim; 3 on cuda, where they share the GPUs: measured on "
                        "2 x H200 with the same verdicts and symptoms as one at a time; 1 "
                        "isolates every variant)")
    p.add_argument("--engine", choices=("models", "vllm"), default="models",
                   help="models: faithful models of the engines' caches (default); vllm: the "
                        "installed vLLM's own current_stream and PyNcclCommunicator (cuda only)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def command(args: argparse.Namespace, console: Console) -> int:
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
    work.mkdir(parents=True, exist_ok=True)
    variants = args.variant or list(VARIANT_MODES)
    jobs = args.jobs or min(4 if choice.name == "sim" else CUDA_JOBS, os.cpu_count() or 1)
    started = time.perf_counter()
    planned: list[tuple[ReproFile, str, int, str, Any]] = []
    for repro in repros:
        spec = load(repro.path).SPEC
        world, skip = plan_world(spec, choice.name, args.gpus, choice.gpus)
        planned += [(repro, variant, world, skip, spec) for variant in variants]

    def one(item: tuple[ReproFile, str, int, str, Any]) -> VariantResult:
        repro, variant, world, skip, spec = item
        if skip:
            return VariantResult(repro.name, variant, choice.name, 0,
                                 spec.expect[variant].describe(), "-", "skip", 0.0, skip)
        return run_variant(repro, variant, choice.name, world, args.timeout, work)

    mark = {"pass": "[green]ok[/]", "fail": "[red]MISMATCH[/]", "skip": "[yellow]skip[/]"}
    results: list[VariantResult] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each variant is its own process group
        for result in pool.map(one, planned):
            results.append(result)
            console.print(f"  {mark[result.verdict]} {result.repro} {result.variant} "
                          f"\\[{choice.name}] {result.seconds:.1f}s")
    rows = [r.to_dict() for r in results]
    console.print(run_table(rows, f"streamcheck run — backend {choice.name}"))
    print_dumps(console, rows)
    failed = sum(r.verdict == "fail" for r in results)
    skipped = sum(r.verdict == "skip" for r in results)
    passed = len(results) - failed - skipped
    elapsed = time.perf_counter() - started
    console.print(f"{passed} matched, {failed} mismatched, {skipped} skipped "
                  f"in {elapsed:.1f}s ({choice.name}); logs in {work}")
    document: dict[str, Any] = {
        "schema": RUN_SCHEMA, "backend": choice.name, "backend_note": choice.note,
        "seconds": round(elapsed, 2), "results": rows,
        "summary": {"matched": passed, "mismatched": failed, "skipped": skipped},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2, default=str))
    if args.junit:
        write_junit(rows, args.junit)
    return 1 if failed else 0
