"""The hook functions, registered (as this module) only when a session audits.

A run without ``--streamcheck`` never registers them, so it adds no wrapper to any test. The
auditor is installed at the first test, not at configure time: an xdist controller, which runs
no tests, then installs nothing and only merges what its workers send.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Generator
from typing import Any

import pytest

from streamcheck.core.report import AuditReport, write_report
from streamcheck.pytest_support import results, summary, verdict
from streamcheck.pytest_support.settings import Settings
from streamcheck.pytest_support.state import STATE, SessionState

PLUGIN_NAME = "streamcheck-audit"


def start(config: pytest.Config, settings: Settings) -> None:
    """Put the session state in the stash and register this module's hooks."""
    config.stash[STATE] = SessionState(settings, is_worker=hasattr(config, "workerinput"))
    config.pluginmanager.register(sys.modules[__name__], PLUGIN_NAME)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, object, object]:
    state = item.config.stash[STATE]
    state.begin(item)
    try:
        return (yield)
    finally:
        state.end()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    error = item.config.stash[STATE].marker_error
    if error is not None:
        pytest.fail(f"{item.nodeid}: {error}", pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    verdict.judge(item.config.stash[STATE], item, call, report)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    state = config.stash[STATE]
    own = results.process_report(state)
    state.audit.finish()
    if state.is_worker:
        config.workeroutput[results.WORKER_KEY] = json.dumps(  # type: ignore[attr-defined]
            own.to_dict())
        return
    parts = state.worker_reports
    if state.items_audited or not parts:
        parts = [own, *parts]
    state.final_report = results.session_report(parts, state.settings.mode.value)
    if state.settings.report_path is not None:
        state.written_to = write_report(state.final_report, state.settings.report_path)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: a worker finished; keep the report it shipped."""
    shipped = getattr(node, "workeroutput", {}).get(results.WORKER_KEY)
    if shipped:
        node.config.stash[STATE].worker_reports.append(
            AuditReport.from_dict(json.loads(shipped)))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash[STATE]
    if state.final_report is not None:
        summary.render(terminalreporter, state.final_report, state.written_to)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is not None:
        state.close()
