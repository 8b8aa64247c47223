"""The ``audit`` fixture of the compiled connector parts' tests (tests/wrappers/
compiled_parts.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from streamcheck import installer
from streamcheck.wrappers import speedups
from tests.wrappers.compiled_parts import CORES, MAIN_ID


@pytest.fixture(params=CORES)
def audit(request, monkeypatch):
    """An ``assert`` audit made under the core asked for; the thread's current stream is
    ``current["id"]`` (MAIN_ID until a test changes it; torch's C read, as on a GPU), its reads
    counted in ``reads["n"]``."""
    current, reads = {"id": MAIN_ID}, {"n": 0}

    def read(device):
        reads["n"] += 1
        return (current["id"], device, 1)

    monkeypatch.setattr(torch._C, "_cuda_getCurrentStream", read, raising=False)
    monkeypatch.setenv("STREAMCHECK_CORE", request.param)  # install chooses the core
    aud = installer.install("assert")
    try:
        yield SimpleNamespace(aud=aud, core=request.param, reads=reads, current=current)
    finally:
        installer.uninstall()
        speedups.use("auto")
