"""Child processes a test starts: audit them through the environment, then read their reports.

A test's subprocesses and multiprocessing children inherit ``os.environ``. For the test's
duration it holds :func:`streamcheck.activation.child_env` for a report directory of that test
alone, so every Python child starts audited and leaves its findings there at exit, and what is
in the directory afterwards belongs to that test, whichever thread started the child.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from streamcheck.activation import child_env
from streamcheck.core.modes import Mode
from streamcheck.core.report import AuditReport, read_report


class EnvOverlay:
    """Set a few environment variables and put back exactly what was there before."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def apply(self, wanted: dict[str, str]) -> None:
        for key, value in wanted.items():
            if os.environ.get(key) != value:
                self._saved.setdefault(key, os.environ.get(key))
                os.environ[key] = value

    def restore(self) -> None:
        for key, old in self._saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._saved.clear()


class ChildReports:
    """The report directory of one test, and which of its files were already read."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seen: set[str] = set()
        self._env = EnvOverlay()

    def activate(self, mode: Mode) -> None:
        """Make child processes started from now on audited in ``mode``, reporting here."""
        self._env.apply(child_env(mode.value, self.directory))

    def deactivate(self) -> None:
        self._env.restore()

    def collect(self) -> list[AuditReport]:
        """Reports written since the last call (each file is complete: writers rename)."""
        if not self.directory.is_dir():
            return []
        fresh = []
        for path in sorted(self.directory.glob("*.json")):
            if path.name in self._seen:
                continue
            self._seen.add(path.name)
            try:
                fresh.append(read_report(path))
            except ValueError as exc:  # a foreign or damaged file: say so, do not crash the run
                fresh.append(_unreadable(path, exc))
        return fresh

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _unreadable(path: Path, exc: ValueError) -> AuditReport:
    return AuditReport(process={"pid": 0, "argv": [str(path)]},
                       extra={"unreadable": str(exc)})
