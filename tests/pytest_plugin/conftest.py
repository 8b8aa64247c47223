"""Fixtures for the plugin's own tests: pytester, and a leaking/clean simulator scenario.

Each test writes a small test file and runs pytest on it, in-process where it can (fast) and
in a subprocess for xdist (which starts its own workers).
"""

from __future__ import annotations

import pytest

# Imported once here: an in-process pytester run drops the modules it imported from
# sys.modules afterwards, and torch cannot be imported a second time in one process; the
# plugin's modules are kept for the same reason (one module object for every inner run).
import torch  # noqa: F401

import streamcheck.pytest_support.fixture
import streamcheck.pytest_support.hooks  # noqa: F401

# A one-rank simulated all-reduce while a connector thread holds `with api.stream(S)`; with
# `leak=True` the communicator reads the process-global stream cache (foreign-stream).
SIMLEAK = '''
import threading

from streamcheck import installer
from streamcheck.repro.patterns import GlobalStreamCache
from streamcheck.runtime.sim import SimCommGroup, SimCommunicator, SimCuda, SimMachine
from streamcheck.runtime.sim.tensor import SimTensors


def all_reduce_beside_connector(leak):
    machine = SimMachine(1)
    api = SimCuda(machine)
    tensors = SimTensors(machine)
    installer.instrument_sim(api)
    cache = GlobalStreamCache(api) if leak else None
    current = cache.current_stream if cache is not None else api.current_stream
    comm = SimCommunicator(SimCommGroup(1), 0, 0, machine, current)
    side = api.Stream()
    entered, stop = threading.Event(), threading.Event()

    def connector():
        with api.stream(side):
            entered.set()
            stop.wait()

    thread = threading.Thread(target=connector, name="kv-connector")
    thread.start()
    entered.wait()
    try:
        comm.all_reduce(tensors.randn(4, 4))
    finally:
        stop.set()
        thread.join()
        if cache is not None:
            cache.remove()
'''


def pytest_configure(config: pytest.Config) -> None:
    # The usual spelling, `pytest_plugins = ["pytester"]`, is refused by pytest in a conftest
    # below the rootdir whenever it is loaded during collection (the whole suite, `-n 2`).
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")


@pytest.fixture
def sc(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester with the scenario module and no streamcheck settings from outside."""
    for name in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "STREAMCHECK_PYTEST", "STREAMCHECK",
                 "STREAMCHECK_REPORT_DIR", "PYTEST_XDIST_AUTO_NUM_WORKERS",
                 "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(simleak=SIMLEAK)
    return pytester
