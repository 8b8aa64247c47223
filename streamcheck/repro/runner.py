"""Run repro variants as process groups with a timeout; dump and kill whatever hangs.

Each variant runs as ``python -m streamcheck.repro.variant_main`` in a new session, so it and
every rank it spawns share one process group. On a timeout every process of the group is
dumped (``py-spy dump`` when available, else the stacks faulthandler prints on SIGUSR1), then
the whole group is killed: nothing outlives the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcheck.repro.discover import ReproFile, load
from streamcheck.repro.outcome import Observation, judge, observe, read_rank_logs


class Cancel:
    """Stops a run: variants not started do not start, running ones are killed at once.

    Set from a signal handler; every variant's wait loop checks it, and :meth:`stop` kills
    the process groups alive now, so nothing keeps GPUs or NCCL after the run is stopped.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._groups: set[int] = set()
        self._lock = threading.Lock()

    def stop(self, signum: int) -> None:
        self.signum = signum
        self.event.set()
        with self._lock:
            groups = list(self._groups)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

    def track(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)
        if self.event.is_set():  # stopped while this one was starting
            self.stop(self.signum or signal.SIGTERM)

    def untrack(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)


@dataclass
class VariantResult:
    repro: str
    variant: str
    backend: str
    world_size: int
    expected: str
    observed: str
    verdict: str  # "pass" | "fail" | "skip" | "cancelled"
    seconds: float
    reason: str = ""
    dumps: dict[str, str] = field(default_factory=dict)
    ranks: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    stderr: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def group_pids(pgid: int) -> list[int]:
    """Every live process in a process group, read from /proc (no psutil needed)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return sorted(pids)


def dump_process(pid: int, timeout: float = 20.0) -> str:
    """All threads' stacks of a live process: py-spy if present, else faulthandler's."""
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


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.time() + 10
    while group_pids(pgid) and time.time() < deadline:
        time.sleep(0.05)


def cancelled_result(repro: ReproFile, variant: str, backend: str, world_size: int,
                     expected: str, seconds: float = 0.0) -> VariantResult:
    return VariantResult(repro.name, variant, backend, world_size, expected, "-", "cancelled",
                         round(seconds, 2), "the run was stopped by a signal")


def run_variant(repro: ReproFile, variant: str, backend: str, world_size: int,
                timeout: float | None, work_dir: Path, cancel: Cancel | None = None
                ) -> VariantResult:
    module = load(repro.path)
    spec = module.SPEC
    cancel = cancel or Cancel()
    if cancel.event.is_set():
        return cancelled_result(repro, variant, backend, world_size,
                                spec.expect[variant].describe())
    limit = timeout if timeout is not None else spec.timeout_s[backend]
    grace = spec.hang_grace_s[backend] if spec.expects_hang(variant) else None
    out = work_dir / f"{repro.name}.{variant}.{backend}.w{world_size}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "streamcheck.repro.variant_main", str(repro.path), variant,
           backend, str(world_size), str(out)]
    start = time.perf_counter()
    with open(out / "variant.stderr", "w") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT,
                                start_new_session=True)
        cancel.track(proc.pid)
        dumps: dict[str, str] = {}
        try:
            timed_out = _wait(proc, out, start + limit, grace, cancel.event)
            if timed_out and not cancel.event.is_set():
                for pid in group_pids(proc.pid):
                    dumps[str(pid)] = dump_process(pid)
                time.sleep(0.2)  # let faulthandler write
        finally:
            kill_group(proc.pid)
            proc.wait()
            cancel.untrack(proc.pid)
    seconds = time.perf_counter() - start
    if cancel.event.is_set():
        return cancelled_result(repro, variant, backend, world_size,
                                spec.expect[variant].describe(), seconds)
    logs = read_rank_logs(out)
    rank_stderr = {int(p.stem[4:]): p.read_text(errors="replace")
                   for p in out.glob("rank*.stderr") if p.stem[4:].isdigit()}
    obs: Observation = observe(logs, world_size, timed_out, spec.iterations[backend],
                               rank_stderr)
    if timed_out and not obs.hung and not obs.not_started:
        obs.symptoms["hang"] = "variant process stuck until killed"
    ok, why = judge(spec.expect[variant], obs, world_size)
    stderr = {p.name: p.read_text()[-6000:] for p in sorted(out.glob("*.stderr"))}
    return VariantResult(
        repro=repro.name, variant=variant, backend=backend, world_size=world_size,
        expected=spec.expect[variant].describe(), observed=obs.describe(),
        verdict="pass" if ok else "fail", seconds=round(seconds, 2), reason=why, dumps=dumps,
        ranks=logs, stderr=stderr,
    )


def _wait(proc: subprocess.Popen[bytes], out: Path, deadline: float,
          grace: float | None, cancelled: threading.Event) -> bool:
    """Wait for the variant; True if it had to be stopped (timeout, peers hung, cancelled).

    With ``grace`` (a variant where a failed or stopped rank leaves its peers stuck, as NCCL
    does), the peers count as hung ``grace`` seconds after the first rank logged its error or
    its blocked launch, instead of waiting for the whole timeout.
    """
    first_error: float | None = None
    while True:
        try:
            proc.wait(timeout=0.2)
            return False
        except subprocess.TimeoutExpired:
            pass
        now = time.perf_counter()
        if now > deadline or cancelled.is_set():
            return True
        if grace is not None:
            if first_error is None and _any_rank_failed(out):
                first_error = now
            if first_error is not None and now - first_error > grace:
                return True


def _any_rank_failed(out: Path) -> bool:
    for path in out.glob("rank*.jsonl"):
        try:
            text = path.read_text()
        except OSError:
            continue
        if '"kind": "error"' in text or '"kind": "blocked"' in text:
            return True
    return False


def plan_world(spec: Any, backend: str, gpus: int | None, available: int) -> tuple[int, str]:
    """(world size, skip reason). The simulator has as many devices as asked."""
    want = gpus if gpus is not None else spec.max_world
    if backend == "sim":
        if want < spec.min_gpus:  # said, not silently raised
            return 0, f"needs {spec.min_gpus} ranks, --gpus {want} given"
        return min(want, spec.max_world), ""
    world = min(want, spec.max_world, available)
    if world < spec.min_gpus:
        return 0, f"needs {spec.min_gpus} GPU(s), {available} present"
    return world, ""


def temp_work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="streamcheck-run-"))
