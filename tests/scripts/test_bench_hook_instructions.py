"""``scripts/bench_hook_instructions.py``: each path it counts is the hook the audit installs,
and, where valgrind is installed, a small count gives the audit a positive share of a call."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from streamcheck import installer
from streamcheck.core.clocks import SNAPSHOT_ATTR
from streamcheck.runtime import cuda
from streamcheck.wrappers import speedups
from streamcheck.wrappers.generated import checked_by_compiled_code
from streamcheck.wrappers.state import ROLES
from tests.scripts.script_modules import SCRIPTS, load_script

bench = load_script("bench_hook_instructions")
# a generated wrapper, a C check
GENERATED = ("explicit", "kept", "fresh", "fresh_default", "distributed", "distributed_helper")


@pytest.mark.skipif(not speedups.built(), reason="streamcheck._speedups is not built here")
@pytest.mark.parametrize("path", sorted(bench.PATHS.values()))
def test_each_path_calls_through_the_compiled_hook_when_audited(path, monkeypatch):
    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    for name in ("torch", "torch._C"):  # handoff_torch puts a stand-in torch in: undone after
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name))
    try:
        for audited in (False, True):
            call = bench.prepare(path, audited)
            call()
            call()
            hooked = _hooked(path, call)
            compiled = (checked_by_compiled_code(hooked) if path in GENERATED
                        else type(hooked).__module__ == "streamcheck._speedups")
            # the "_py" paths count the compiled hooks with the auditor's declare (or the
            # host-wait hook) in Python
            assert compiled == (audited and not path.endswith("_py")), (path, audited,
                                                                         type(hooked))
            if audited:
                auditor = installer.current_auditor()
                assert auditor.findings() == []
                installer.uninstall()
    finally:
        installer.uninstall()
        speedups.use("auto")
        cuda.use_reader(None)  # the handoff paths read streams through the script's reader
        release_engines()


def release_engines() -> None:
    """End the engine threads ``distributed_helper`` declared, and take their roles back (the
    role table is the process's)."""
    bench.ENGINE_STOP.set()
    for engine in bench.ENGINES:
        engine.join()
        ROLES.forget(engine.ident)
    bench.ENGINES.clear()
    bench.ENGINE_STOP.clear()


def _hooked(path, call):
    """What ``call`` goes through: the patched method, ``set_stream`` or ``__new__``."""
    if path in ("explicit", "kept"):
        return bench.Communicator.__dict__["all_reduce"]
    if path in ("fresh", "fresh_default"):
        return bench.FreshCommunicator.__dict__["all_reduce"]
    if path in ("distributed", "distributed_helper"):
        return bench.Distributed.all_reduce
    if path == "set_stream":
        return call.__closure__[0].cell_contents
    if path == "wait_stream":
        return bench.Event.__dict__["record"]
    if path == "stream_wait":
        return bench.KeptStream.__dict__["wait_stream"]
    if path == "stream_wait_events":
        return bench.Event.__dict__["record"]
    if path in ("host_wait", "host_wait_py"):
        return bench.KeptStream.__dict__["synchronize"]
    if path in ("event_wait", "event_wait_py"):
        return bench.Event.__dict__["wait"]
    if path in ("event_sync", "event_sync_py"):
        return bench.Event.__dict__["synchronize"]
    if path in bench.DECLARING:
        auditor = installer.current_auditor()  # declared accesses: its declare
        return None if auditor is None else auditor.declare
    return bench.MadeStream.__dict__["__new__"].__func__


@pytest.mark.skipif(not speedups.built(), reason="streamcheck._speedups is not built here")
@pytest.mark.parametrize("path", ["distributed", "distributed_helper"])
def test_the_distributed_paths_pass_in_c(path, monkeypatch):
    """The counted call passes the compiled test and never reaches the Python hook (which
    looks for the tensor with ``_first_tensor``): the count is of the plain case."""
    from streamcheck.wrappers import torch_distributed

    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    looked: list = []
    first_tensor = torch_distributed._first_tensor
    monkeypatch.setattr(torch_distributed, "_first_tensor",
                        lambda *a: looked.append(a) or first_tensor(*a))
    try:
        call = bench.prepare(path, True)
        for _ in range(3):
            call()
        auditor = installer.current_auditor()
        assert looked == [] and auditor.findings() == []
        assert auditor.coverage.launches_by_op()["bench.dist.all_reduce"] == 3
        assert (auditor.main_engine is None) == (path == "distributed_helper")
    finally:
        installer.uninstall()
        speedups.use("auto")
        release_engines()


@pytest.mark.parametrize("path", ["wait_stream", "stream_wait", "stream_wait_events"])
def test_the_wait_stream_paths_are_the_plain_live_case_in_c(path, monkeypatch):
    """Both event hooks compiled (and for ``stream_wait`` the stream's ``wait_stream`` hook);
    the record keeps its snapshot (the clocks are live) and the wait adds nothing to the
    waiting stream's clock, so none reaches a Python hook."""
    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    try:
        call = bench.prepare(path, True)
        hooks = (bench.Event.__dict__["record"], bench.Event.__dict__["wait"],
                 *((bench.KeptStream.__dict__["wait_stream"],) if path == "stream_wait" else ()))
        assert all(type(h).__name__ == "GuardedCall" for h in hooks)
        auditor = installer.current_auditor()
        table = dict(auditor.clocks._clocks)
        asked: list = []
        monkeypatch.setattr(auditor, "event_recorded", lambda *a: asked.append(a))
        monkeypatch.setattr(auditor, "event_waited", lambda *a: asked.append(a))
        monkeypatch.setattr(auditor, "stream_waited", lambda *a: asked.append(a))
        live = bench.Event()
        live.record(bench.KEPT)  # the clocks are live: the record keeps the stream's clock
        assert getattr(live, SNAPSHOT_ATTR) is table[(0, bench.KEPT.stream_id)]
        call()
        call()
        assert asked == [] and auditor.clocks._clocks == table
        assert all(auditor.clocks._clocks[k] is v for k, v in table.items())
    finally:
        installer.uninstall()
        speedups.use("auto")


def test_sizes_that_count_nothing_are_refused():
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_hook_instructions.py"),
                           "--few", "10", "--many", "10"], capture_output=True, text=True)
    assert done.returncode == 2 and "--many must be larger than --few" in done.stderr
    # --cold's own defaults never replace sizes given, in either spelling
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_hook_instructions.py"),
                           "--cold", "--few=10", "--many=10"], capture_output=True, text=True)
    assert done.returncode == 2 and "--many must be larger than --few" in done.stderr


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed here")
@pytest.mark.skipif(not speedups.built(), reason="streamcheck._speedups is not built here")
def test_a_small_count_gives_the_audit_a_share_of_an_explicit_launch():
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_hook_instructions.py"),
                           "--few", "20", "--many", "220", "--paths", "explicit", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    row = bench.json.loads(done.stdout.splitlines()[-1])["instructions_per_call"][
        "collective launch, explicit stream"]
    assert row["unaudited"] > 0 and row["added"] > 0
    assert row["audited"] == pytest.approx(row["unaudited"] + row["added"], abs=0.2)


def test_callgrinds_totals_are_named_by_its_events_and_its_left_out_zeros_filled():
    text = "events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\nsummary: 900 300 100 40 30 5\n"
    assert bench.event_totals(text, "p") == {"Ir": 900, "Dr": 300, "Dw": 100, "I1mr": 40,
                                             "D1mr": 30, "D1mw": 5, "ILmr": 0, "DLmr": 0,
                                             "DLmw": 0}
    assert bench.event_totals("events: Ir\nsummary: 55587\n", "p") == {"Ir": 55587}
    with pytest.raises(RuntimeError, match="no event totals"):
        bench.event_totals("events: Ir\n", "p")
    with pytest.raises(RuntimeError, match="more totals than events"):
        bench.event_totals("events: Ir\nsummary: 1 2\n", "p")


@pytest.mark.skipif(not speedups.built(), reason="streamcheck._speedups is not built here")
def test_a_cold_child_makes_its_calls_each_after_a_sweep():
    """The child ``--cold`` runs (without valgrind here): its calls, each after the sweep."""
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_hook_instructions.py"),
                           "--child", "explicit", "1", "5", "--cold"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed here")
@pytest.mark.skipif(not speedups.built(), reason="streamcheck._speedups is not built here")
def test_a_cold_count_gives_the_audit_lines_of_its_own():
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_hook_instructions.py"),
                           "--cold", "--few", "2", "--many", "12", "--paths", "explicit",
                           "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    row = bench.json.loads(done.stdout.splitlines()[-1])["cold_lines_per_call"][
        "collective launch, explicit stream"]
    assert row["unaudited code"] > 0 and row["unaudited data"] > 0
    assert row["added code"] > 0 and row["added data"] > 0
