"""Keep each audited process's report current on disk, not only at a clean exit.

Engine workers are often ended without ``atexit``: multiprocessing's fork children leave
through ``os._exit``, engines SIGKILL workers that do not stop in time, an ``assert``-mode
finding may end the process at once. A report written only at exit is then never written, and
a run's report directory reads "0 launches audited" for processes that audited thousands. So
the writer writes the report:

* when the audit starts (a process that then audits nothing still says so);
* at once on every new distinct finding (before an ``assert`` stops the launch);
* every :data:`INTERVAL_S` seconds from a daemon thread, when the counts changed;
* at exit: ``atexit`` and multiprocessing's finalizers (which fork children do run).

Every write replaces the file atomically; ``final`` is true only in the exit write, so a report
of a killed process says it was cut short. A forked child starts its own report (new pid, its
own counts and findings) instead of repeating its parent's.
"""

from __future__ import annotations

import atexit
import os
import secrets
import socket
import threading
from pathlib import Path
from typing import Any

from streamcheck.core.modes import ConfigError
from streamcheck.core.records import Finding
from streamcheck.core.report import write_report
from streamcheck.wrappers import speedups
from streamcheck.wrappers.state import current_auditor

INTERVAL_S = 2.0


def report_path(report_dir: str | os.PathLike[str]) -> Path:
    name = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}.json"
    return Path(report_dir) / name


def check_writable(report_dir: str | os.PathLike[str], source: str) -> Path:
    """Make sure reports can be written to ``report_dir`` now, not only at exit."""
    directory = Path(report_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".streamcheck-probe-{os.getpid()}-{secrets.token_hex(3)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{source}={str(report_dir)!r}: cannot write reports there "
                          f"({exc.strerror or exc})") from None
    return directory


class ProcessReportWriter:
    """Writes this process's report into one directory for as long as it is audited."""

    def __init__(self, report_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(report_dir)
        self.path = report_path(self.directory)
        self._lock = threading.Lock()
        self._seen: set[tuple[object, ...]] = set()
        self._written: tuple[int, int] | None = None
        self._subscribed: Any = None
        self._stop = threading.Event()
        self._closed = False

    def start(self) -> None:
        self.write()
        self._subscribe()
        self._start_thread()
        atexit.register(self.close)
        import multiprocessing.util

        multiprocessing.util.Finalize(None, self.close, exitpriority=100)
        os.register_at_fork(after_in_child=self._after_fork)

    def write(self, final: bool = False) -> Path | None:
        auditor = current_auditor()
        if auditor is None:
            return None
        with self._lock:
            report = auditor.report(final=final, stream_reads=speedups.stream_reads())
            self._written = (report.launches_audited, len(report.findings))
            try:
                return write_report(report, self.path)
            except OSError:
                return None  # the directory went away; the next write tries again

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.write(final=True)

    # ---- internals ------------------------------------------------------------------------

    def _subscribe(self) -> None:
        auditor = current_auditor()
        if auditor is not None and auditor is not self._subscribed:
            self._subscribed = auditor
            auditor.subscribe(self._on_finding)

    def _on_finding(self, finding: Finding) -> None:
        key = finding.dedupe_key
        if key not in self._seen:
            self._seen.add(key)
            self.write()

    def _start_thread(self) -> None:
        self._stop = threading.Event()
        thread = threading.Thread(target=self._tick, name="streamcheck-report", daemon=True)
        thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            auditor = current_auditor()
            if auditor is None:
                continue
            self._subscribe()
            if (auditor.launches, len(auditor.entries())) != self._written:
                self.write()

    def _after_fork(self) -> None:
        """In a forked child: a report of its own, counting from zero."""
        self._lock = threading.Lock()
        self.path = report_path(self.directory)
        self._seen = set()
        self._written = None
        self._closed = False
        auditor = current_auditor()
        if auditor is not None:
            auditor.clear()
            auditor.coverage.reset_counts()
        self.write()
        self._start_thread()
