"""Keep the process's auditor installed for each test and route its findings to that test.

The audit has one auditor per process, and tests may uninstall it (streamcheck's own suite
does, after every test) or change its mode. So the plugin does not install once and trust it:
before every test it installs again (a no-op when nothing changed) and, when the auditor is a
new one, moves its listener over and banks the old one's launch count.
"""

from __future__ import annotations

from collections.abc import Callable

from streamcheck import installer
from streamcheck.core.auditor import Auditor
from streamcheck.core.modes import Mode
from streamcheck.core.records import Finding
from streamcheck.core.report import merged_runtime


class AuditHandle:
    """The plugin's hold on the process auditor."""

    def __init__(self, on_finding: Callable[[Finding], None]) -> None:
        self._on_finding = on_finding
        self._auditor: Auditor | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._banked_launches = 0
        self._preexisting: Mode | None = None
        self._touched = False
        self._runtimes: set[str] = set()  # of the auditors this session held

    @property
    def auditor(self) -> Auditor | None:
        return self._auditor

    @property
    def runtime(self) -> str:
        """What streams were read from: "cuda", "sim" (or "mixed"); "none" when neither."""
        seen = set(self._runtimes)
        if self._auditor is not None:
            seen.add(self._auditor.runtime)
        return merged_runtime(seen)

    @property
    def launches(self) -> int:
        current = self._auditor.launches if self._auditor is not None else 0
        return self._banked_launches + current

    def ensure(self, mode: Mode) -> None:
        """Installed, in ``mode``, with our listener on the current auditor."""
        if not self._touched:
            # A process started audited (STREAMCHECK in its environment) keeps its auditor
            # after the session; remember its mode to give it back.
            self._touched = True
            existing = installer.current_auditor()
            self._preexisting = existing.mode if existing is not None else None
        auditor = installer.install(mode)
        if auditor is not self._auditor:
            self._detach()
            self._auditor = auditor
            if auditor is not None:
                self._unsubscribe = auditor.subscribe(self._on_finding)

    def suspend(self) -> None:
        """No audit at all until the next :meth:`ensure` (a test marked ``no_streamcheck``)."""
        self._detach()
        installer.uninstall()

    def finish(self) -> None:
        """Leave the process as the session found it."""
        self._detach()
        if not self._touched:
            return
        if self._preexisting is not None:
            installer.install(self._preexisting)
        else:
            installer.uninstall()
        self._touched = False

    def _detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._auditor is not None:
            self._banked_launches += self._auditor.launches
            self._runtimes.add(self._auditor.runtime)
            self._auditor = None
