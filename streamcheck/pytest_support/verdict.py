"""Turn a test's findings into its failure: the call report fails, with the findings as text.

Findings are surfaced once. Those seen by the end of the call phase go into the call report;
findings first seen in teardown (a fixture's finalizer launching, a late child report) fail
the teardown report. A phase that already failed keeps its own error and gets the findings as
an extra section. In assert mode the StreamHazardError the test raised *is* the failure, so
the findings it carries are not reported a second time.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamcheck.core.errors import StreamHazardError
from streamcheck.core.modes import Mode
from streamcheck.pytest_support.records import Observed
from streamcheck.pytest_support.settings import MARKER
from streamcheck.pytest_support.state import SessionState


def judge(state: SessionState, item: pytest.Item, call: pytest.CallInfo[Any],
          report: pytest.TestReport) -> None:
    record = state.current
    if record is None or record.nodeid != item.nodeid:
        return
    if call.when == "setup" and report.passed:
        return  # the call phase reports them
    state.collect_children()
    pending = record.take_unsurfaced(exclude=_raised_keys(call.excinfo))
    if not pending:
        return
    text = failure_text(pending, state.settings.mode, call.when)
    if report.failed:
        report.sections.append((f"streamcheck findings ({call.when})", text))
        return
    report.outcome = "failed"
    report.longrepr = text
    if hasattr(report, "wasxfail"):  # an xfail test that leaked did not fail "as expected"
        del report.wasxfail


def _raised_keys(excinfo: pytest.ExceptionInfo[BaseException] | None) -> set[tuple[object, ...]]:
    """Findings carried by a StreamHazardError in the test's exception (or its causes)."""
    keys: set[tuple[object, ...]] = set()
    exc = excinfo.value if excinfo is not None else None
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StreamHazardError):
            keys.update(f.dedupe_key for f in exc.findings)
        exc = exc.__cause__ or exc.__context__
    return keys


def failure_text(pending: list[Observed], mode: Mode, when: str) -> str:
    rules = sorted({o.rule_id for o in pending})
    n = len(pending)
    parts = [f"streamcheck: {', '.join(rules)} ({n} stream hazard{'s' if n > 1 else ''} while "
             f"this test ran, {mode.value} mode, seen by the end of {when})"]
    for obs in pending:
        header = "" if obs.pid is None else f"in {obs.where}:\n"
        parts.append(header + obs.text)
    parts.append(f"A test that provokes this on purpose can say so: "
                 f"@pytest.mark.{MARKER}(allow={rules!r})")
    return "\n\n".join(parts)
