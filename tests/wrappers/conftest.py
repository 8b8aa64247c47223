"""The ``audit`` fixture of the compiled connector parts' tests (tests/wrappers/
compiled_parts.py), and ``each_core`` of the tests on torch's own objects."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import streamcheck
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


@pytest.fixture(params=["compiled", "python"])
def each_core(request, monkeypatch):
    """The ``core`` setting for a test that installs the audit itself (skipped, and saying so,
    for the compiled hooks where they are not built); the audit uninstalled after it."""
    if request.param == "compiled" and not speedups.built():
        pytest.skip("the compiled hooks are not built here (scripts/build_speedups.sh)")
    monkeypatch.setenv("STREAMCHECK_CORE", request.param)
    yield request.param
    streamcheck.uninstall()
    speedups.use("auto")
