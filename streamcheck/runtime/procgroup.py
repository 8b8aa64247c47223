"""Run child processes that must never outlive their caller: spawn, wait with a deadline, kill.

One helper for every place streamcheck starts processes that may hang (a repro variant's ranks
stuck in NCCL, the doctor's probe stuck in vLLM's import, the NCCL self-test's ranks):

    with ProcessGroup(cancel=cancel) as group:
        for rank in range(world):
            group.spawn([...], env=env, output=out / f"rank{rank}.stderr")
        waited = group.wait(timeout, grace=12.0, failed=records_say_failed)
        if waited.stopped:
            dumps = group.dump()
    # here every member and everything it started is dead and reaped

Each member starts in a session of its own, so it and whatever it starts share a process group
that one ``killpg`` ends. Members are not reaped while the group lives (their exit is observed
with ``waitid(WNOWAIT)``): an exited, unreaped member keeps its pid, which is also its group's
id, from being reused, so the final SIGKILL to the group never reaches a stranger. Leaving the
``with`` block in any way (a timeout, an exception, KeyboardInterrupt) kills every group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

#: How long :meth:`ProcessGroup.kill` waits for a killed group to be gone.
REAP_S = 10.0


class Cancel:
    """Stops every group that tracks it: groups not yet waited on stop at once, live ones die.

    Set from a signal handler (:func:`stop_on_signals`) or another thread; :meth:`stop` kills
    every group alive now, so nothing keeps GPUs or NCCL once a run is stopped.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._groups: set[int] = set()
        self._lock = threading.Lock()

    @property
    def is_set(self) -> bool:
        return self.event.is_set()

    def stop(self, signum: int) -> None:
        self.signum = signum
        self.event.set()
        with self._lock:
            groups = list(self._groups)
        for pgid in groups:
            _killpg(pgid)

    def track(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)
        if self.event.is_set():  # stopped while this one was starting
            self.stop(self.signum or signal.SIGTERM)

    def untrack(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals(cancel: Cancel, signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """While inside, these signals stop ``cancel`` (every tracked group is killed at once)
    instead of ending the process; the old handlers come back on the way out. Outside the main
    thread, where Python cannot set handlers, the caller's own handling stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: cancel.stop(signum))
                for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class Member:
    """One process of a group: where its output goes and, once known, its exit status."""

    index: int
    proc: subprocess.Popen[bytes]
    output: Path  # stdout, and stderr too unless ``errors`` is set
    errors: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status (-N: killed by signal N); None while it runs."""
        return self.proc.returncode if self.proc.returncode is not None else exit_status(self.proc)

    def read_output(self, limit: int | None = None) -> str:
        return _read_tail(self.output, limit)

    def read_errors(self, limit: int | None = None) -> str:
        return _read_tail(self.errors, limit) if self.errors is not None else ""


@dataclass(frozen=True)
class Waited:
    """How :meth:`ProcessGroup.wait` ended.

    ``exited``: every member exited by itself; ``timeout``: the deadline passed; ``peers``: a
    member failed and the rest were still running ``grace`` seconds later (as NCCL peers stay
    blocked for a rank that is gone); ``cancelled``: the :class:`Cancel` was stopped.
    """

    reason: str
    seconds: float

    @property
    def stopped(self) -> bool:
        """True when members may still be running: they have to be killed, not awaited."""
        return self.reason != "exited"


class ProcessGroup:
    """Processes started together and stopped together; see the module's docstring."""

    def __init__(self, directory: Path | None = None, *, cancel: Cancel | None = None) -> None:
        self._directory = directory
        self._own_dir: Path | None = None
        self._cancel = cancel
        self.members: list[Member] = []
        self._closed = False

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ starting

    def spawn(self, argv: list[str], *, env: dict[str, str] | None = None,
              output: Path | None = None, errors: Path | bool = False,
              cwd: str | Path | None = None) -> Member:
        """Start ``argv`` in a session of its own, stdin closed. stdout goes to ``output``;
        stderr joins it, or goes to ``errors`` when that names a file (True: a file of the
        group's own). Files the group names itself are removed on close."""
        if self._closed:
            raise RuntimeError("this process group is closed")
        index = len(self.members)
        out_path = output if output is not None else self._scratch() / f"member{index}.out"
        err_path = (self._scratch() / f"member{index}.err" if errors is True
                    else errors or None)
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(out_path, "wb"))
            err = (files.enter_context(open(err_path, "wb")) if err_path is not None
                   else subprocess.STDOUT)
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
        member = Member(index, proc, out_path, err_path)
        self.members.append(member)
        if self._cancel is not None:
            self._cancel.track(proc.pid)  # kills it at once if the run is already stopped
        return member

    def _scratch(self) -> Path:
        if self._directory is not None:
            self._directory.mkdir(parents=True, exist_ok=True)
            return self._directory
        if self._own_dir is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="streamcheck-procs-"))
        return self._own_dir

    # ------------------------------------------------------------------ waiting

    def wait(self, timeout: float, *, grace: float | None = None,
             failed: Callable[[], bool] | None = None, poll: float = 0.05) -> Waited:
        """Wait until every member exited, the deadline passed, or the run was cancelled.

        With ``grace``, a failure (a member exiting with a non-zero status, or ``failed()``
        turning true) leaves the others ``grace`` more seconds before they count as stuck.
        Nothing is killed here: leave the group (or call :meth:`kill`) for that.
        """
        start = time.monotonic()
        deadline = start + timeout
        failed_at: float | None = None
        while True:
            if self._cancel is not None and self._cancel.is_set:  # also when it killed them all
                return Waited("cancelled", time.monotonic() - start)
            codes = [m.returncode for m in self.members]
            if all(code is not None for code in codes):
                return Waited("exited", time.monotonic() - start)
            now = time.monotonic()
            if now >= deadline:
                return Waited("timeout", now - start)
            if grace is not None:
                if failed_at is None and (any(code not in (None, 0) for code in codes)
                                          or (failed is not None and failed())):
                    failed_at = now
                if failed_at is not None and now - failed_at >= grace:
                    return Waited("peers", now - start)
            time.sleep(poll)

    # ------------------------------------------------------------------ looking, stopping

    def pids(self) -> list[int]:
        """Every live process of the members' groups (members and whatever they started)."""
        return sorted(pid for m in self.members for pid in group_pids(m.pid))

    def dump(self) -> dict[str, str]:
        """The stacks of every live process of the group, by pid (see :func:`dump_stacks`)."""
        dumps = {str(pid): dump_stacks(pid) for pid in self.pids()}
        if dumps:
            time.sleep(0.2)  # let faulthandler write
        return dumps

    def kill(self) -> None:
        """SIGKILL every member's group, reap the members, wait until the groups are empty."""
        for m in self.members:
            if self._cancel is not None:  # before the reaping below frees the pid for reuse
                self._cancel.untrack(m.pid)
            if m.proc.returncode is None:  # never reaped: its pid is still its group's id
                _killpg(m.pid)
        for m in self.members:
            m.proc.wait()
        deadline = time.monotonic() + REAP_S
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        """:meth:`kill`, then remove the output files the group made itself."""
        if self._closed:
            return
        try:
            self.kill()
        finally:
            self._closed = True
            if self._own_dir is not None:
                shutil.rmtree(self._own_dir, ignore_errors=True)


def exit_status(proc: subprocess.Popen[bytes]) -> int | None:
    """The process's exit status once it has exited, else None, without reaping it."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped elsewhere
        return proc.poll()
    if info is None or info.si_pid == 0:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def group_pids(pgid: int) -> list[int]:
    """Every live (not zombie) process in a process group, read from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(entry))
    return sorted(pids)


def dump_stacks(pid: int, timeout: float = 20.0) -> str:
    """All threads' stacks of a live process: ``py-spy dump`` when installed; otherwise
    SIGUSR1, on which a process that registered faulthandler (repro variants and ranks do)
    writes them to its own stderr."""
    py_spy = shutil.which("py-spy")
    if py_spy:
        try:
            done = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True,
                                  text=True, timeout=timeout)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout
            fallback = f"(py-spy failed: {done.stderr.strip()[:300]})\n"
        except subprocess.TimeoutExpired:
            fallback = "(py-spy timed out)\n"
    else:
        fallback = "(py-spy not installed; stacks from faulthandler on SIGUSR1 are in stderr)\n"
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return fallback + "(process already gone)"
    return fallback


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read_tail(path: Path, limit: int | None) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return (data[-limit:] if limit is not None else data).decode(errors="replace")
