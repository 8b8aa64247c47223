"""Run child processes that must never outlive their caller: spawn, wait with a deadline, kill.

The helper for the processes streamcheck's package starts that may hang (a repro variant's
ranks stuck in NCCL, the doctor's probe stuck in vLLM's import, the NCCL self-test's ranks).
The device scripts under ``scripts/`` (``engine_check.py``, ``gpu_vllm_ranks.py``) do not use
it: they keep their own spawn and ``killpg`` code.

    with ProcessGroup(cancel=cancel) as group:
        for rank in range(world):
            group.spawn([...], env=env, output=out / f"rank{rank}.stderr")
        waited = group.wait(timeout, grace=12.0, failed=records_say_failed)
        if waited.stopped:
            dumps = group.dump()
    # here every member and everything it started is dead and reaped (or, for a process
    # SIGKILL could not end within REAP_S, named in group.survivors)

Each member starts in a session of its own, so it and whatever it starts share a process group
that one ``killpg`` ends. Members are not reaped while the group lives (their exit is observed
with ``waitid(WNOWAIT)``): an exited, unreaped member keeps its pid, which is also its group's
id, from being reused, so the final SIGKILL to the group never reaches a stranger. Leaving the
``with`` block in any way (a timeout, an exception, KeyboardInterrupt) kills every group.

Members that must meet (NCCL ranks sharing a unique id) do it through a file:
:func:`rendezvous` has rank 0 make the value and publish it, and the others wait for it.
"""

from __future__ import annotations

import contextlib
import json
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

    :meth:`stop` (from any thread) kills every group alive now, so nothing keeps GPUs or NCCL
    once a run is stopped. A signal handler calls :meth:`request` instead, which takes no lock:
    the handler runs on the main thread between two bytecodes, possibly while that thread holds
    the lock inside :meth:`track` or :meth:`untrack`, and a plain Lock taken again there would
    deadlock. (An RLock would avoid that one deadlock; the flag is used so that nothing a
    handler does can block or wait on another thread.) After a request, each group is killed by
    the thread waiting on it (:meth:`ProcessGroup.wait` returns "cancelled" at its next poll and
    leaving the group kills it), and a group that starts later is killed by :meth:`track`.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._stopped = False  # only ever set, never cleared: a plain attribute is enough
        self._groups: set[int] = set()
        self._lock = threading.Lock()

    @property
    def is_set(self) -> bool:
        return self._stopped

    def request(self, signum: int) -> None:
        """Mark the run stopped, nothing more: safe inside a signal handler."""
        if not self._stopped:
            self.signum = signum
        self._stopped = True

    def stop(self, signum: int) -> None:
        """Mark the run stopped and kill every tracked group now (not from a signal handler)."""
        self.request(signum)
        with self._lock:  # held while killing: untrack() (then reaping) waits for the kills
            for pgid in self._groups:
                _killpg(pgid)

    def track(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)
        if self._stopped:  # stopped while this one was starting
            self.stop(self.signum or signal.SIGTERM)

    def untrack(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals(cancel: Cancel, signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """While inside, these signals stop ``cancel`` instead of ending the process: the handler
    only calls :meth:`Cancel.request`, and every group is killed by the thread waiting on it
    within one poll. The old handlers come back on the way out. Outside the main thread, where
    Python cannot set handlers, the caller's own handling stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: cancel.request(signum))
                for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class RendezvousError(RuntimeError):
    """Rank 0's value never came: rank 0 could not make it, or the deadline passed first."""


def publish(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that no reader sees part of it: a temporary file beside
    it, then a rename (atomic within one file system)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rendezvous(path: Path, rank: int, make: Callable[[], bytes], timeout: float, *,
               what: str = "", poll: float = 0.05) -> bytes:
    """A value every member of a group shares, made once, by rank 0, and passed through a file.

    Rank 0 calls ``make()`` and publishes the value at ``path``; when ``make`` raises, it
    publishes the error instead (so the others fail at once with it, not at their deadline) and
    re-raises. Any other rank waits at most ``timeout`` seconds for the file and returns the
    value, or raises :class:`RendezvousError` naming ``what`` (default: the file's name).

    Used for NCCL unique ids: ``ncclGetUniqueId`` starts NCCL's bootstrap root (a thread and a
    listening socket that end only once every rank has joined) in the process that calls it,
    so it is called in a rank, which dies with its group, never in a long-lived parent.
    """
    what = what or path.name
    if rank == 0:
        try:
            value = make()
        except Exception as exc:
            publish(path, json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
            raise
        publish(path, json.dumps({"value": value.hex()}))
        return value
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = json.loads(path.read_text())
            break
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                raise RendezvousError(
                    f"rank {rank}: rank 0 did not publish {what} within {timeout:g} s "
                    f"(no {path}); rank 0 died or is stuck before making it") from None
            time.sleep(poll)
    if "error" in data:
        raise RendezvousError(f"rank {rank}: rank 0 could not make {what}: {data['error']}")
    return bytes.fromhex(data["value"])


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
        #: after :meth:`kill`: pids still alive (or members not reaped) REAP_S seconds after
        #: SIGKILL, as a process in uninterruptible sleep stays; empty when all ended
        self.survivors: list[int] = []
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
        return group_pids(*(m.pid for m in self.members))

    def dump(self) -> dict[str, str]:
        """The stacks of every live process of the group, by pid (see :func:`dump_stacks`);
        the processes not reached yet are skipped once the run is cancelled."""
        dumps = {}
        for pid in self.pids():
            if self._cancel is not None and self._cancel.is_set:
                break
            dumps[str(pid)] = dump_stacks(pid)
        if dumps:
            time.sleep(0.2)  # let faulthandler write
        return dumps

    def kill(self) -> list[int]:
        """SIGKILL every member's group, reap the members, wait until the groups are empty;
        all of it bounded by REAP_S. Returns (and keeps in :attr:`survivors`) the pids still
        there after that: a process in uninterruptible sleep outlives SIGKILL until its I/O
        (a driver call) returns, and waiting for it here would hang the caller."""
        for m in self.members:
            if self._cancel is not None:  # before the reaping below frees the pid for reuse
                self._cancel.untrack(m.pid)
            if m.proc.returncode is None:  # never reaped: its pid is still its group's id
                _killpg(m.pid)
        deadline = time.monotonic() + REAP_S
        unreaped = []
        for m in self.members:
            try:
                m.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                unreaped.append(m.pid)
        left = self.pids()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.pids()  # one /proc scan for every member's group
        self.survivors = sorted(set(left) | set(unreaped))
        return self.survivors

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


def group_pids(*pgids: int) -> list[int]:
    """Every live (not zombie) process in any of these process groups, from one /proc scan."""
    wanted = set(pgids)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) in wanted and fields[0] not in ("Z", "X"):
            pids.append(int(entry))
    return sorted(pids)


def dump_stacks(pid: int, timeout: float = 20.0) -> str:
    """All threads' stacks of a live process: ``py-spy dump`` when installed; otherwise
    SIGUSR1, on which a process that registered faulthandler (repro variants and ranks do)
    writes them to its own stderr. Only to a process that catches SIGUSR1: for any other one
    (a grandchild, a worker someone else started) the signal's default action is to end it,
    which would turn a look at a hung run into a kill that its stacks never show."""
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
    caught = catches_signal(pid, signal.SIGUSR1)
    if caught is None:
        return fallback + ("(process already gone)" if not _alive(pid) else
                           "(not signalled: its signal handlers could not be read)")
    if not caught:
        return fallback + "(not signalled: the process does not catch SIGUSR1, which would end it)"
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return fallback + "(process already gone)"
    return fallback


def catches_signal(pid: int, signum: int) -> bool | None:
    """Whether the process has a handler for ``signum`` (its ``SigCgt`` mask in
    /proc/PID/status), None where that cannot be read (the process gone, /proc hidden)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists; signalling it is not ours to do
        pass
    return True


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read_tail(path: Path, limit: int | None) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return (data[-limit:] if limit is not None else data).decode(errors="replace")
