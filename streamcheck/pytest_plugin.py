"""``pytest --streamcheck``: audit every test for CUDA stream/thread hazards.

This module holds only the options, the marker, the fixture's entry point and the hook
registration; the work is in :mod:`streamcheck.pytest_support`, imported and registered only
when a mode is active. A run without ``--streamcheck`` (or with ``--streamcheck=off``)
installs nothing, patches nothing and adds no hook to the test loop.

The mode comes from ``--streamcheck[=MODE]``, else the ini option ``streamcheck``, else the
environment variable ``STREAMCHECK_PYTEST``. See docs/pytest-plugin.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from streamcheck.pytest_support.fixture import FindingsView

MARKER_HELP = (
    "streamcheck(allow=[rule ids]): allow these streamcheck findings in this test (it still "
    "records them)"
)
NO_AUDIT_HELP = "no_streamcheck: do not audit this test at all (streamcheck's audit is off for it)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("streamcheck", "CUDA stream/thread hazard audit (streamcheck)")
    group.addoption(
        "--streamcheck", nargs="?", const="record", default=None, metavar="MODE",
        dest="streamcheck",
        help="audit each test; a test whose run (its threads and child processes included) "
             "produced a finding fails. MODE: record (default), warn, assert, off.",
    )
    group.addoption(
        "--streamcheck-report", default=None, metavar="PATH", dest="streamcheck_report",
        help="write the session's findings (JSON, schema streamcheck.report/1, with a 'tests' "
             "mapping nodeid -> findings) to PATH.",
    )
    parser.addini("streamcheck", "streamcheck mode when --streamcheck is not given "
                  "(record, warn, assert, off)", default="")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser,
                                  args: list[str]) -> None:
    """Let ``pytest --streamcheck tests/`` mean the default mode on ``tests/``."""
    if "--streamcheck" not in args:
        return
    from streamcheck.pytest_support.settings import split_bare_flag

    if split_bare_flag(args, early_config.invocation_params.dir):
        early_config.known_args_namespace = parser.parse_known_args(
            args, namespace=early_config.known_args_namespace)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    config.addinivalue_line("markers", NO_AUDIT_HELP)
    from streamcheck.pytest_support.settings import read_settings

    settings = read_settings(config)
    if not settings.mode.active:
        return
    # A dotted import, not `from streamcheck.pytest_support import hooks`: that one trusts
    # the package attribute, which can outlive the module in sys.modules (pytester in-process).
    from streamcheck.pytest_support.hooks import start

    start(config, settings)


@pytest.fixture
def streamcheck_findings(request: pytest.FixtureRequest) -> FindingsView:
    """The running test's streamcheck findings (a live, callable sequence view)."""
    from streamcheck.pytest_support.fixture import findings_view

    return findings_view(request)
