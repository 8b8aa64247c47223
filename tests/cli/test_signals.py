"""A stopped run leaves nothing behind: SIGTERM, SIGINT and SIGHUP end every variant's process
group within seconds, the partial summary and --json are still written, and the exit code is
128 + the signal number."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def processes_of(marker: str, but: int = 0) -> list[int]:
    """Live processes whose command line mentions ``marker`` (this run's work directory),
    other than ``but`` (the ``streamcheck run`` process itself)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), but):
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry))
    return found


def cuda_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.parametrize("backend", ["sim", pytest.param("cuda", marks=pytest.mark.skipif(
    cuda_gpus() < 2, reason="the CUDA variants need 2 GPUs"))])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_every_variant_process(sig: signal.Signals, backend: str,
                                              tmp_path: Path) -> None:
    work = tmp_path / f"work-{sig.name}"
    report = tmp_path / "run.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcheck.cli.main", "run",
         "repro_global_stream_leak_error400", "repro_global_stream_leak_nan",
         "--backend", backend, "--jobs", "2", "--timeout", "120", "--keep", str(work),
         "--json", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    while time.time() < deadline and not processes_of(str(work), but=proc.pid):
        time.sleep(0.1)
    assert processes_of(str(work), but=proc.pid), "no variant process started"
    time.sleep(1.0)  # let them get going
    proc.send_signal(sig)
    try:  # it stops at once, not after the variants' timeouts
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *processes_of(str(work), but=proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{sig.name} did not stop the run within 15 s:\n{out}")
    assert proc.returncode == 128 + sig, out
    assert f"stopped by {sig.name}" in out and "Traceback" not in out
    doc = json.loads(report.read_text())
    assert doc["stopped_by"] == sig.name and doc["summary"]["cancelled"] >= 1
    deadline = time.time() + 10  # killed process groups may take a moment to be reaped
    while processes_of(str(work)) and time.time() < deadline:
        time.sleep(0.1)
    assert processes_of(str(work)) == []
