"""One ``streamcheck run``: plan the variants, run them a few at a time, return a RunReport.

    session = ReproSession(select(["repro_*"]), choose_backend("auto"))
    with stop_on_signals(session.cancel):
        report = session.run(listener)   # a RunReport; report.exit_code for the shell

The plan loads each repro module once (for its ``SPEC``); every variant then runs in process
groups of its own (:func:`~streamcheck.repro.runner.run_variant`), ``jobs`` at a time. A stopped
:attr:`cancel` kills every group alive and leaves the variants not yet started cancelled. A
variant that raises is a failed row naming the error, and the run goes on; an exception that
reaches :meth:`ReproSession.run` itself (KeyboardInterrupt without ``stop_on_signals``) stops
the cancel, starts no queued variant and is re-raised. The
rank logs stay in the work directory when asked (``keep_dir``), when a variant mismatched, or
when the run was stopped; otherwise they are removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from streamcheck.repro.discover import ReproFile, load
from streamcheck.repro.run_report import RunReport, VariantResult
from streamcheck.repro.runner import plan_world, run_variant, skipped_result, temp_work_dir
from streamcheck.repro.spec import VARIANT_MODES, ReproSpec
from streamcheck.runtime.procgroup import Cancel
from streamcheck.runtime.select import BackendChoice

# Variants at once on CUDA. On 2 x H200, 3 at once gave 18/18 matches in 57 s (NaN 28-30/30,
# error 400 and the hangs as when alone); one at a time took 157 s. With 12 repros, 3 at once:
# 36/36 in 112-129 s (docs/measurements.md). Rank processes of
# concurrent variants share the GPUs; each variant still has its own NCCL communicators.
CUDA_JOBS = 3
SIM_JOBS = 4
ENGINES = ("models", "vllm")


class RunListener(Protocol):
    """Told as variants start and finish (from the session's worker threads)."""

    def started(self, label: str) -> None: ...

    def finished(self, label: str, result: VariantResult) -> None: ...


class _Silent:
    def started(self, label: str) -> None:
        pass

    def finished(self, label: str, result: VariantResult) -> None:
        pass


@dataclass(frozen=True)
class PlannedVariant:
    repro: ReproFile
    spec: ReproSpec
    variant: str
    world_size: int
    skip: str = ""  # why it will not run: too few GPUs or ranks

    @property
    def label(self) -> str:
        return f"{self.repro.name} {self.variant}"


class ReproSession:
    """A planned run of repro variants on one backend; :meth:`run` runs it (once).

    Raises ValueError for what cannot run at all: an engine the backend or the installation
    cannot offer, a ``keep_dir`` that cannot be written.
    """

    def __init__(self, repros: Iterable[ReproFile], backend: BackendChoice, *,
                 variants: Iterable[str] | None = None, gpus: int | None = None,
                 timeout: float | None = None, jobs: int | None = None,
                 keep_dir: Path | None = None, engine: str = "models",
                 cancel: Cancel | None = None) -> None:
        self.backend = backend
        self.timeout = timeout
        self.cancel = cancel or Cancel()
        self.engine = engine
        self.engine_version = self._check_engine(engine, backend)
        self.keep_dir = keep_dir
        if keep_dir is not None:
            _check_writable(keep_dir)
        wanted = list(dict.fromkeys(variants or VARIANT_MODES))  # a repeated one runs once
        unknown = [v for v in wanted if v not in VARIANT_MODES]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from {sorted(VARIANT_MODES)}")
        self.jobs = jobs or min(SIM_JOBS if backend.name == "sim" else CUDA_JOBS,
                                os.cpu_count() or 1)
        self.plan: list[PlannedVariant] = []
        for repro in repros:
            spec = load(repro.path).SPEC  # once per repro; each variant's processes load it
            world, skip = plan_world(spec, backend.name, gpus, backend.gpus)
            self.plan += [PlannedVariant(repro, spec, v, world, skip) for v in wanted]
        self._ran = False

    @staticmethod
    def _check_engine(engine: str, backend: BackendChoice) -> str | None:
        """The vLLM version ``--engine vllm`` will run; None for the models."""
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
        if engine == "models":
            return None
        if backend.name != "cuda":
            raise ValueError("--engine vllm needs the cuda backend (real GPUs and NCCL)")
        from streamcheck.vllm_compat import vllm_version

        version = vllm_version()
        if version is None:
            raise ValueError("--engine vllm: vLLM is not importable here")
        return version

    def run(self, listener: RunListener | None = None) -> RunReport:
        if self._ran:
            raise RuntimeError("a ReproSession runs once; make another for another run")
        self._ran = True
        listener = listener or _Silent()
        started = time.perf_counter()
        work = self.keep_dir if self.keep_dir is not None else temp_work_dir()
        engine = "vllm" if self.engine == "vllm" else ""

        def one(item: PlannedVariant) -> VariantResult:
            if item.skip:
                return skipped_result(item.repro, item.variant, self.backend.name,
                                      item.spec.expect[item.variant].describe(), item.skip)
            begun = time.perf_counter()
            try:
                listener.started(item.label)
                return run_variant(item.repro, item.variant, self.backend.name,
                                   item.world_size, self.timeout, work, self.cancel,
                                   spec=item.spec, engine=engine)
            except Exception as exc:  # one broken variant is one failed row; the run goes on
                return failed_result(item, self.backend.name, exc, time.perf_counter() - begun)

        results: dict[int, VariantResult] = {}
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        try:
            futures = {pool.submit(one, item): i for i, item in enumerate(self.plan)}
            for future in as_completed(futures):  # each variant is its own process group
                index = futures[future]
                results[index] = future.result()
                listener.finished(self.plan[index].label, results[index])
        except BaseException as exc:
            # KeyboardInterrupt without stop_on_signals, or the listener failing: kill the
            # variants running, start none of those queued, then let it go on up. (Leaving a
            # ``with ThreadPoolExecutor`` would first run every queued variant to its end.)
            self.cancel.stop(signal.SIGINT if isinstance(exc, KeyboardInterrupt)
                             else signal.SIGTERM)
            pool.shutdown(wait=True, cancel_futures=True)  # the running ones end at once
            raise
        pool.shutdown(wait=True)
        signum = self.cancel.signum if self.cancel.is_set else None
        report = RunReport(
            backend=self.backend.name, backend_note=self.backend.note,
            seconds=time.perf_counter() - started,
            results=[results[i] for i in range(len(self.plan))],  # plan order, not finish order
            stopped_by=signal.Signals(signum).name if signum is not None else None,
            work_dir=work,
        )
        report.logs_kept = (self.keep_dir is not None or report.mismatched > 0
                            or report.stopped_by is not None)
        if not report.logs_kept:
            shutil.rmtree(work, ignore_errors=True)
        return report


def failed_result(item: PlannedVariant, backend: str, exc: Exception,
                  seconds: float) -> VariantResult:
    """The row of a variant that could not be run or judged: an error in streamcheck itself
    (or the listener), named with its traceback, instead of ending the run."""
    return VariantResult(
        item.repro.name, item.variant, backend, item.world_size,
        item.spec.expect[item.variant].describe(), "-", "fail", round(seconds, 2),
        f"streamcheck failed running this variant: {type(exc).__name__}: {exc}",
        stderr={"streamcheck.traceback": traceback.format_exc()[-6000:]},
    )


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".streamcheck-write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--keep {directory}: cannot write there ({exc.strerror or exc})"
                         ) from None
