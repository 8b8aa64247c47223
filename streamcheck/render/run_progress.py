"""Live progress of a repro run: results as they finish, and what is still running.

A run of many variants takes seconds to minutes. On a terminal a status line under the results
shows ``N/M done``, the variants running now and the elapsed time (``rich.progress``); it is
transient, so what stays on screen is one line per variant in the order they finished. A pipe or
CI log gets only those lines.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

if TYPE_CHECKING:
    from streamcheck.repro.run_report import VariantResult

MARK = {"pass": "[green]ok[/]", "fail": "[red]MISMATCH[/]", "skip": "[yellow]skip[/]",
        "cancelled": "[yellow]cancelled[/]"}


class RunProgress:
    """``with RunProgress(console, total) as p: p.started(label) ... p.finished(label, result)``
    (a :class:`~streamcheck.repro.session.RunListener`).

    Thread-safe: variants start and finish on the run's worker threads. ``quiet`` keeps only
    mismatches on screen.
    """

    def __init__(self, console: Console, total: int, *, quiet: bool = False) -> None:
        self._total = total
        self._quiet = quiet
        self._running: dict[str, None] = {}  # insertion-ordered set of labels
        self._done = 0
        self._lock = threading.Lock()
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=20),
            MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True,
        )
        self._task = self._progress.add_task("starting", total=total)

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def started(self, label: str) -> None:
        with self._lock:
            self._running[label] = None
            self._describe()

    def finished(self, label: str, result: VariantResult) -> None:
        with self._lock:
            self._running.pop(label, None)
            self._done += 1
            self._progress.advance(self._task)
            self._describe()
            if self._quiet and result.verdict != "fail":
                return
            reason = f" — {result.reason}" if result.verdict in ("fail", "skip") else ""
            self._progress.console.print(
                f"  {MARK[result.verdict]} {result.repro} {result.variant} "
                f"\\[{result.backend}] {result.seconds:.1f}s "
                f"[dim]({self._done}/{self._total})[/]{reason}", highlight=False)

    def _describe(self) -> None:
        running = list(self._running)  # oldest first: the one most likely to be stuck
        more = f" (+{len(running) - 1} more)" if len(running) > 1 else ""
        self._progress.update(self._task, description=f"running {running[0]}{more}" if running
                              else "waiting")
