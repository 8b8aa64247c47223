"""The process-group helper: members end how they end, and nothing outlives the group.

Every test uses real processes; each member also starts a grandchild that sleeps, so "nothing
left running" covers what a member started, not only the member.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamcheck.runtime import procgroup
from streamcheck.runtime.procgroup import (
    Cancel,
    ProcessGroup,
    group_pids,
    rendezvous,
    stop_on_signals,
)
from tests.processes import process_gone

ROOT = str(Path(procgroup.__file__).resolve().parents[2])

CHILD = """
import os, subprocess, sys, time
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {kid.pid}")
print("hello from", sys.argv[2], flush=True)
print("oops", file=sys.stderr, flush=True)
code = int(sys.argv[3])
if code >= 0:
    sys.exit(code)
time.sleep(600)
"""



def _start(group: ProcessGroup, tmp: Path, name: str, code: int, **kw) -> Path:
    """A member that starts a sleeping grandchild, then exits with ``code`` (-1: sleeps)."""
    pids = tmp / f"{name}.pids"
    group.spawn([sys.executable, "-c", CHILD, str(pids), name, str(code)], **kw)
    return pids


def _pids(files: list[Path]) -> list[int]:
    deadline = time.monotonic() + 30
    while not all(f.exists() and f.read_text() for f in files):
        assert time.monotonic() < deadline, "a member never started"
        time.sleep(0.02)
    return [int(p) for f in files for p in f.read_text().split()]


def _all_gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 10  # init may take a moment to reap a killed grandchild
    while not all(process_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return all(process_gone(p) for p in pids)


def test_members_that_exit_are_collected_and_their_grandchildren_killed(tmp_path):
    with ProcessGroup() as group:
        files = [_start(group, tmp_path, "a", 0), _start(group, tmp_path, "b", 5)]
        waited = group.wait(60)
        pids = _pids(files)
        assert waited.reason == "exited" and not waited.stopped
        assert [m.returncode for m in group.members] == [0, 5]
        assert "hello from a" in group.members[0].read_output()
        assert "oops" in group.members[1].read_output()  # stderr joins stdout by default
        leftovers = group.pids()
        assert leftovers and set(leftovers) <= set(pids)  # the sleeping grandchildren
    assert _all_gone(pids), "a grandchild outlived the group"


def test_a_timeout_kills_every_member_and_what_it_started(tmp_path):
    t0 = time.monotonic()
    with ProcessGroup() as group:
        files = [_start(group, tmp_path, f"r{i}", -1) for i in range(2)]
        waited = group.wait(3)
        pids = _pids(files)
    assert waited.reason == "timeout" and waited.stopped
    assert [m.returncode for m in group.members] == [-9, -9]
    assert _all_gone(pids)
    assert time.monotonic() - t0 < 30


def test_a_failed_member_leaves_its_peers_only_the_grace(tmp_path):
    with ProcessGroup() as group:
        files = [_start(group, tmp_path, "dies", 3), _start(group, tmp_path, "stuck", -1)]
        waited = group.wait(120, grace=1.0)
        pids = _pids(files)
    assert waited.reason == "peers" and waited.seconds < 60
    assert [m.returncode for m in group.members] == [3, -9]
    assert _all_gone(pids)


def test_a_failure_the_caller_sees_starts_the_grace_too(tmp_path):
    flag = tmp_path / "failed"
    with ProcessGroup() as group:
        files = [_start(group, tmp_path, "stuck", -1)]
        threading.Timer(0.5, flag.touch).start()
        waited = group.wait(120, grace=0.5, failed=flag.exists)
        pids = _pids(files)
    assert waited.reason == "peers" and waited.seconds < 60
    assert _all_gone(pids)


def test_without_grace_a_failure_waits_for_the_deadline(tmp_path):
    with ProcessGroup() as group:
        _start(group, tmp_path, "dies", 3)
        _start(group, tmp_path, "stuck", -1)
        waited = group.wait(2.0)
    assert waited.reason == "timeout" and waited.seconds >= 2.0


def test_cancel_from_another_thread_kills_at_once(tmp_path):
    cancel = Cancel()
    with ProcessGroup(cancel=cancel) as group:
        files = [_start(group, tmp_path, "stuck", -1)]
        pids = _pids(files)
        threading.Timer(0.3, cancel.stop, args=(15,)).start()
        waited = group.wait(120)
        assert waited.reason == "cancelled" and waited.seconds < 30
        assert _all_gone(pids[:1])  # the member died when the cancel fired, before close
        late = _start(group, tmp_path, "late", -1)  # started after the stop: killed at once
        assert group.wait(120).reason == "cancelled"
    assert group.members[-1].returncode == -9 and not late.exists()
    assert cancel.signum == 15 and _all_gone(pids)


def test_keyboard_interrupt_inside_the_block_kills_everything(tmp_path):
    files: list[Path] = []
    with pytest.raises(KeyboardInterrupt), ProcessGroup() as group:
        files.append(_start(group, tmp_path, "stuck", -1))
        _pids(files)
        raise KeyboardInterrupt
    assert _all_gone(_pids(files))
    assert group.pids() == []


def test_outputs_go_where_asked_and_scratch_files_are_removed(tmp_path):
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with ProcessGroup() as group:
        member = group.spawn([sys.executable, "-c", "import sys; print('o'); "
                              "print('e', file=sys.stderr)"], output=out, errors=err)
        scratch = group.spawn([sys.executable, "-c", "print('x')"])
        assert group.wait(60).reason == "exited"
        assert member.read_output().strip() == "o" and member.read_errors().strip() == "e"
        assert scratch.read_output().strip() == "x"
    assert out.exists() and not scratch.output.exists()


def test_a_dump_names_every_live_process(tmp_path):
    with ProcessGroup() as group:
        files = [_start(group, tmp_path, "stuck", -1)]
        pids = _pids(files)
        dumps = group.dump()
        assert set(map(int, dumps)) == set(pids) == set(group_pids(pids[0]))
    assert _all_gone(pids)


def test_a_signal_while_the_main_thread_holds_the_cancel_lock_does_not_deadlock(tmp_path):
    # The handler runs on the main thread between two bytecodes, here while that thread is
    # inside track()/untrack() (holding the cancel's lock): it must not take that lock again.
    script = (
        "import signal\n"
        "from streamcheck.runtime.procgroup import Cancel, stop_on_signals\n"
        "cancel = Cancel()\n"
        "with stop_on_signals(cancel):\n"
        "    with cancel._lock:\n"
        "        signal.raise_signal(signal.SIGINT)\n"
        "    cancel.track(999999999)  # a stopped cancel kills what starts later, outside it\n"
        "print('stopped', cancel.is_set, cancel.signum)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    except subprocess.TimeoutExpired:
        pytest.fail("the signal handler deadlocked on the cancel's lock")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"stopped True {int(signal.SIGINT)}"


def test_a_signal_stops_a_waiting_group_and_leaving_it_kills_everything(tmp_path):
    cancel = Cancel()
    with stop_on_signals(cancel), ProcessGroup(cancel=cancel) as group:
        files = [_start(group, tmp_path, "stuck", -1)]
        pids = _pids(files)
        threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGTERM)).start()
        waited = group.wait(120)
    assert waited.reason == "cancelled" and cancel.signum == signal.SIGTERM
    assert _all_gone(pids) and group.survivors == []


class _StuckInKernel:
    """A member's Popen as seen when SIGKILL cannot end it yet (uninterruptible sleep): every
    wait times out. Without a timeout, a real wait would block for as long as it lasts."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.real = proc
        self.pid = proc.pid
        self.returncode = None

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            raise AssertionError("kill() waited without a timeout: it would hang here")
        raise subprocess.TimeoutExpired("member", timeout)


def test_kill_is_bounded_and_names_what_it_could_not_reap(tmp_path, monkeypatch):
    monkeypatch.setattr(procgroup, "REAP_S", 0.5)
    group = ProcessGroup()
    files = [_start(group, tmp_path, "stuck", -1)]
    pids = _pids(files)
    member = group.members[0]
    real = member.proc
    member.proc = _StuckInKernel(real)  # type: ignore[assignment]
    try:
        survivors = group.kill()
        assert survivors == group.survivors and member.pid in survivors
    finally:
        real.wait()
    assert _all_gone(pids)


def test_pids_reads_proc_once_for_all_members(tmp_path, monkeypatch):
    with ProcessGroup() as group:
        files = [_start(group, tmp_path, f"m{i}", -1) for i in range(3)]
        pids = _pids(files)
        scans = []
        listdir = os.listdir

        def counting(path):
            scans.append(path)
            return listdir(path)

        monkeypatch.setattr(os, "listdir", counting)
        assert set(group.pids()) == set(pids)
        monkeypatch.undo()
        assert scans == ["/proc"]
    assert _all_gone(pids)


def test_rendezvous_across_processes(tmp_path):
    path = tmp_path / "id.json"
    reader = (
        "import sys\nfrom pathlib import Path\n"
        "from streamcheck.runtime.procgroup import rendezvous\n"
        "print(rendezvous(Path(sys.argv[1]), 1, lambda: b'not me', 60).hex())\n"
    )
    with ProcessGroup() as group:
        peer = group.spawn([sys.executable, "-c", reader, str(path)],
                           env={**os.environ, "PYTHONPATH": ROOT})
        assert rendezvous(path, 0, lambda: b"\xab\xcd", 60) == b"\xab\xcd"
        assert group.wait(120).reason == "exited"
        assert peer.returncode == 0 and peer.read_output().strip() == "abcd"


def test_without_py_spy_a_dump_signals_only_the_processes_that_catch_sigusr1(tmp_path,
                                                                            monkeypatch):
    """The fallback's SIGUSR1 ends a process that has no handler for it: the dump must leave
    such a process running (and say why it has no stacks), and still signal one that
    registered faulthandler, whose stacks then reach its stderr."""
    monkeypatch.setattr(procgroup.shutil, "which", lambda name: None)
    listening = (
        "import faulthandler, signal, sys, time\n"
        "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
        "open(sys.argv[1], 'w').write('ready')\n"
        "time.sleep(600)\n"
    )
    deaf = "import sys, time\nopen(sys.argv[1], 'w').write('ready')\ntime.sleep(600)\n"
    with ProcessGroup() as group:
        ready = [tmp_path / "listening.ready", tmp_path / "deaf.ready"]
        listener = group.spawn([sys.executable, "-c", listening, str(ready[0])],
                               output=tmp_path / "listening.out")
        other = group.spawn([sys.executable, "-c", deaf, str(ready[1])],
                            output=tmp_path / "deaf.out")
        deadline = time.monotonic() + 30
        while not all(f.exists() for f in ready):
            assert time.monotonic() < deadline, "a member never started"
            time.sleep(0.02)
        dumps = group.dump()
        assert "does not catch SIGUSR1" in dumps[str(other.pid)]
        assert "does not catch" not in dumps[str(listener.pid)]
        time.sleep(0.3)
        assert not process_gone(other.pid) and not process_gone(listener.pid)
        deadline = time.monotonic() + 10
        while "most recent call first" not in (tmp_path / "listening.out").read_text(
            errors="replace"):
            assert time.monotonic() < deadline, "faulthandler wrote no stacks"
            time.sleep(0.05)
    assert process_gone(other.pid) and process_gone(listener.pid)


def test_without_py_spy_a_process_whose_handlers_cannot_be_read_is_not_signalled(monkeypatch):
    """/proc hidden from this user (``hidepid``): a live process is not called gone, and not
    signalled either, since the signal could end it."""
    monkeypatch.setattr(procgroup.shutil, "which", lambda name: None)
    monkeypatch.setattr(procgroup, "catches_signal", lambda pid, signum: None)
    sent = []
    monkeypatch.setattr(procgroup.os, "kill", lambda pid, sig: sent.append(sig))
    text = procgroup.dump_stacks(os.getpid())
    assert "could not be read" in text and "gone" not in text
    assert signal.SIGUSR1 not in sent  # only the existence probe (signal 0) was sent
