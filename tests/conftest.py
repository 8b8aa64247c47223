"""Shared fixtures: every test leaves the process un-audited, as it found it."""

from __future__ import annotations

import pytest

from streamcheck import installer


@pytest.fixture(autouse=True)
def _no_audit_leaks():
    yield
    installer.uninstall()
