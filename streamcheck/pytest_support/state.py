"""The session state, kept in ``config.stash``: no globals, nothing hung on items.

One :class:`SessionState` per pytest config. It knows the test running now (findings from any
thread go to it), that test's child-process report directory, the records of finished tests
that had findings, and, on an xdist controller, the reports the workers shipped.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streamcheck.core.modes import Mode
from streamcheck.core.records import Finding
from streamcheck.core.report import AuditReport
from streamcheck.pytest_support.audit_handle import AuditHandle
from streamcheck.pytest_support.children import ChildReports
from streamcheck.pytest_support.records import ItemRecord
from streamcheck.pytest_support.settings import ItemPolicy, MarkerError, Settings, policy_for


@dataclass
class SessionState:
    settings: Settings
    is_worker: bool = False
    current: ItemRecord | None = None
    children: ChildReports | None = None
    marker_error: str | None = None
    records: list[ItemRecord] = field(default_factory=list)
    unattributed: ItemRecord = field(default_factory=lambda: ItemRecord(""))
    items_audited: int = 0
    child_launches: int = 0
    worker_reports: list[AuditReport] = field(default_factory=list)
    final_report: AuditReport | None = None
    written_to: Path | None = None
    _scratch: Path | None = None
    audit: AuditHandle = field(init=False)

    def __post_init__(self) -> None:
        self.audit = AuditHandle(self._route)

    def _route(self, finding: Finding) -> None:
        """The auditor listener: whatever thread launched, the running test owns the finding."""
        record = self.current
        (record if record is not None else self.unattributed).add(finding)

    # ---- one test -------------------------------------------------------------------------

    def begin(self, item: pytest.Item) -> None:
        self.marker_error = None
        try:
            policy = policy_for(item)
        except MarkerError as exc:
            self.marker_error = str(exc)
            policy = ItemPolicy(skip=True)
        if policy.skip:
            self.audit.suspend()
            return
        mode = self.settings.mode
        if mode is Mode.ASSERT and policy.allow:
            # assert mode would stop the allowed launch too; the plugin still fails the test
            # for any finding that is not allowed.
            mode = Mode.RECORD
        self.audit.ensure(mode)
        self.current = ItemRecord(item.nodeid, policy.allow)
        self.children = ChildReports(self._scratch_dir() / str(self.items_audited))
        self.children.activate(mode)
        self.items_audited += 1

    def collect_children(self) -> None:
        """Attribute the reports the current test's child processes have written so far."""
        if self.current is not None and self.children is not None:
            for report in self.children.collect():
                self.child_launches += report.launches_audited
                self.current.add_child_report(report)

    def end(self) -> None:
        record, children = self.current, self.children
        try:
            self.collect_children()
        finally:
            self.current = self.children = None
            if children is not None:
                children.deactivate()
                children.remove()
        if record:
            self.records.append(record)

    # ---- the session ----------------------------------------------------------------------

    def _scratch_dir(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="streamcheck-pytest-"))
        return self._scratch

    def close(self) -> None:
        """Last resort at unconfigure: environment, audit and scratch space as they were."""
        if self.children is not None:
            self.children.deactivate()
            self.current = self.children = None
        self.audit.finish()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


STATE = pytest.StashKey[SessionState]()
