"""Launch sites are instrumented in any import order, once, and restored exactly.

Every test writes a small communicator module to a fresh directory and names it as a user
target (``STREAMCHECK_TARGETS`` syntax), so the import watch is exercised the way a team's
own communicator is: imported before the audit, after it, after an uninstall, and again.
A simulated reader stands in for CUDA's (this torch may be a CPU build).
"""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

import pytest

import streamcheck
from streamcheck import installer
from streamcheck.core.errors import StreamHazardError
from streamcheck.core.ids import StreamRef
from streamcheck.runtime.cuda import StreamReader, use_reader
from streamcheck.settings import AuditSettings
from tests.core.fakes import made_current

COMM = '''
class Stream:
    def __init__(self, device, stream_id):
        self.device_index, self.stream_id, self.cuda_stream = device, stream_id, 0x100 + stream_id

CACHED = Stream(0, 0)

def current_stream():
    return CACHED

class Comm:
    def __init__(self, device):
        self.device = device
        self.used = []

    def all_reduce(self, tensor, out=None, stream=None):
        self.used.append(stream)
        return out

    def broadcast(self, tensor, src, stream=None):
        self.used.append(stream)
'''

BASE = '''
class ConnectorBase:
    def save_kv_layer(self, name):
        raise NotImplementedError
'''

SUB = '''
from {base} import ConnectorBase

class LateConnector(ConnectorBase):
    def save_kv_layer(self, name):
        return "saved " + name
'''

# (stream id, device) per thread ident: what the simulated runtime says is current.
CURRENT: dict[int, tuple[int, int]] = {}


def reader() -> StreamReader:
    def current_stream(device: int) -> tuple[int, int, int]:
        sid, _ = CURRENT.get(threading.get_ident(), (0, 0))
        return (sid, device, 1)

    return StreamReader(current_stream, lambda: CURRENT.get(threading.get_ident(), (0, 0))[1],
                        name="test")


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh module name per test (``comm_<n>``), importable from tmp_path."""
    name = f"sc_late_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(COMM)
    (tmp_path / f"{name}_base.py").write_text(BASE)
    (tmp_path / f"{name}_sub.py").write_text(SUB.format(base=f"{name}_base"))
    monkeypatch.syspath_prepend(str(tmp_path))
    use_reader(reader())
    CURRENT.clear()
    yield name
    use_reader(None)
    for mod in (name, f"{name}_base", f"{name}_sub"):
        sys.modules.pop(mod, None)


def settings(name: str, mode: str = "assert") -> AuditSettings:
    target = f"{name}:Comm.all_reduce,broadcast stream={name}:current_stream"
    return AuditSettings.load({}, pyproject=False, mode=mode, targets=[target])


def test_imported_after_install_is_patched_and_audited(modules: str) -> None:
    aud = streamcheck.install(settings=settings(modules))
    before = installer.installed_patches()
    mod = importlib.import_module(modules)
    assert installer.installed_patches() == before + 2
    comm = mod.Comm(0)
    comm.all_reduce("t")
    assert comm.used == [mod.CACHED]  # the audited stream is the one passed on
    mod.CACHED = mod.Stream(0, 5)  # the cache now hands out a stream this thread never had
    with pytest.raises(StreamHazardError, match="stale-stream-cache"):
        comm.all_reduce("t")
    assert len(comm.used) == 1  # stopped before the launch
    state = {t.name: t for t in aud.coverage.targets()}[f"{modules}:Comm"]
    assert (state.state, state.methods, state.source) == (
        "instrumented", ["all_reduce", "broadcast"], "argument targets")
    assert aud.coverage.launches_by_op()[f"{modules}.Comm.all_reduce"] == 2


def test_imported_before_install_is_patched_at_install(modules: str) -> None:
    mod = importlib.import_module(modules)
    original = mod.Comm.__dict__["all_reduce"]
    streamcheck.install(settings=settings(modules))
    assert mod.Comm.__dict__["all_reduce"] is not original
    assert mod.Comm.__dict__["all_reduce"].__wrapped__ is original


def test_uninstall_restores_late_patches_and_disarms_the_watch(modules: str) -> None:
    empty = installer.installed_patches()
    streamcheck.install(settings=settings(modules))
    torch_hooks = installer.installed_patches()
    mod = importlib.import_module(modules)
    original = mod.Comm.__dict__["all_reduce"].__wrapped__
    assert installer.installed_patches() == torch_hooks + 2
    streamcheck.uninstall()
    assert installer.installed_patches() == empty == 0
    assert mod.Comm.__dict__["all_reduce"] is original
    sys.modules.pop(modules)  # imported again after uninstall: nothing patches it
    again = importlib.import_module(modules)
    assert not hasattr(again.Comm.__dict__["all_reduce"], "__wrapped__")
    streamcheck.install(settings=settings(modules))  # a second install reaches it
    assert again.Comm.__dict__["all_reduce"].__wrapped__ is not None
    streamcheck.install(settings=settings(modules))  # and a third changes nothing
    assert installer.installed_patches() == torch_hooks + 2


def test_subclass_defined_after_install_is_audited(modules: str) -> None:
    from streamcheck.wrappers.sites import LaunchSite

    streamcheck.install("record")
    site = LaunchSite("test.connector", f"{modules}_base", "ConnectorBase",
                      ("save_kv_layer",), kind="connector-base")
    installer.instrument(site)
    base = importlib.import_module(f"{modules}_base")
    assert "__init_subclass__" in base.ConnectorBase.__dict__
    sub = importlib.import_module(f"{modules}_sub")
    conn = sub.LateConnector()
    assert conn.save_kv_layer("l0") == "saved l0"
    CURRENT[threading.get_ident()] = (7, 0)  # the engine computes on a side stream,
    made_current(installer.current_auditor().book, StreamRef(0, 7))  # made current by its hook
    helper = threading.Thread(target=conn.save_kv_layer, args=("l1",), name="kv-saver")
    helper.start()
    helper.join()
    aud = installer.current_auditor()
    assert [f.rule_id for f in aud.findings()] == ["default-stream-in-worker"]
    assert aud.coverage.launches_by_op()["connector.LateConnector.save_kv_layer"] == 2
    streamcheck.uninstall()
    assert "__init_subclass__" not in base.ConnectorBase.__dict__
    assert not hasattr(sub.LateConnector.__dict__["save_kv_layer"], "__wrapped__")


def test_a_target_that_is_not_there_is_reported_not_raised(modules: str) -> None:
    target = f"{modules}:NoSuchComm.all_reduce"
    aud = streamcheck.install(settings=AuditSettings.load({}, pyproject=False, mode="record",
                                                          targets=[target]))
    importlib.import_module(modules)
    state = {t.name: t for t in aud.coverage.targets()}[f"{modules}:NoSuchComm"]
    assert state.state == "unavailable" and "has no NoSuchComm" in state.detail


def test_one_wrapper_per_method_under_concurrent_imports(modules: str) -> None:
    streamcheck.install(settings=settings(modules))
    barrier = threading.Barrier(4)

    def go() -> None:
        barrier.wait()
        importlib.import_module(modules)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mod = sys.modules[modules]
    inner = mod.Comm.__dict__["all_reduce"].__wrapped__
    assert not hasattr(inner, "__wrapped__")  # wrapped exactly once


CLASHING = '''
def current_stream():
    return None

class Comm:
    def __init__(self, device):
        self.device = device

    def all_reduce(self, tensor, handle=None, stream=None):
        return handle

    def broadcast(self, tensor, src, stream=None):
        return src
'''


def test_a_method_whose_parameter_the_wrapper_would_take_is_not_wrapped_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A parameter named as the generated wrapper's own (``handle``) would be handed the
    wrapper's value: the method is left as it is, with a warning, and a target left with
    nothing audited is reported unavailable, saying why."""
    name = f"sc_clash_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(CLASHING)
    monkeypatch.syspath_prepend(str(tmp_path))
    use_reader(reader())

    def audit(methods: str):
        target = f"{name}:Comm.{methods} stream={name}:current_stream"
        return streamcheck.install(settings=AuditSettings.load(
            {}, pyproject=False, mode="record", targets=[target]))

    try:
        audit("all_reduce,broadcast")
        with pytest.warns(RuntimeWarning, match="parameter handle .* not audited"):
            mod = importlib.import_module(name)
        assert mod.Comm(0).all_reduce(None, handle=7) == 7
        assert not hasattr(mod.Comm.__dict__["all_reduce"], "__wrapped__")
        assert hasattr(mod.Comm.__dict__["broadcast"], "__wrapped__")
        streamcheck.uninstall()
        sys.modules.pop(name, None)
        aud = audit("all_reduce")
        importlib.import_module(name)
        state = {t.name: t for t in aud.coverage.targets()}[f"{name}:Comm"]
        assert state.state == "unavailable" and "parameter handle" in state.detail
    finally:
        streamcheck.uninstall()
        use_reader(None)
        sys.modules.pop(name, None)
