"""The parent side of the probe: start the child, bound it in time, read back its answer.

The child is a fresh interpreter with ``--vllm-path`` directories first on its ``PYTHONPATH``
(so a tree that is not installed can be probed) and this checkout's ``streamcheck`` after them.
It runs in its own process group, so a probe stuck in vLLM's import or in a CUDA call is killed
whole at the deadline. Whatever goes wrong becomes "cannot tell" with the reason; it never
becomes "not affected".
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import streamcheck
from streamcheck.doctor import environment
from streamcheck.doctor.hazards import FRESH_THREAD_DEVICE
from streamcheck.doctor.model import (
    DoctorReport,
    HazardResult,
    ProbeOutcome,
    Verdict,
    cannot_tell_all,
)
from streamcheck.doctor.probe_main import RESULT_TAG
from streamcheck.runtime.procgroup import ProcessGroup
from streamcheck.runtime.select import choose_backend
from streamcheck.settings import ENV_MODE, ENV_REPORT_DIR

DEFAULT_TIMEOUT_S = 180.0


@dataclass
class ProbeRequest:
    """What to probe and how: the CLI's options, as data the tests can build directly."""

    vllm_path: list[str] = field(default_factory=list)
    backend: str = "auto"
    timeout: float = DEFAULT_TIMEOUT_S
    probe: bool = True


def probe_env(vllm_path: list[str], backend: str) -> dict[str, str]:
    """The child's environment: the vLLM tree first, then the caller's path, then streamcheck.

    For the simulator, ``VLLM_TARGET_DEVICE=cpu`` (unless set) keeps whatever vLLM resolves
    before the platform shim from looking for a GPU; the shim then replaces that platform.
    streamcheck's own audit switches are removed: audit wrappers around ``current_stream()``
    in the child would change what the probe observes.
    """
    env = {k: v for k, v in os.environ.items() if k not in (ENV_MODE, ENV_REPORT_DIR)}
    # Last, so an installed streamcheck's site-packages never shadows a vLLM that the user's
    # own PYTHONPATH points at.
    ours = str(Path(streamcheck.__file__).resolve().parent.parent)
    parts = [str(Path(p).resolve()) for p in vllm_path]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join([*parts, ours])
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if backend == "sim":
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    return env


def run_probe(backend: str, vllm_path: list[str], timeout: float) -> ProbeOutcome:
    """One child run; its outcome, or every hazard as "cannot tell" with why it failed."""
    cmd = [sys.executable, "-m", "streamcheck.doctor.probe_main", "--backend", backend]
    with ProcessGroup() as group:
        child = group.spawn(cmd, env=probe_env(vllm_path, backend), errors=True)
        waited = group.wait(timeout)
        out, err = child.read_output(), child.read_errors()
    if waited.stopped:
        return _failed(backend, f"the probe did not finish within {timeout:.0f} s "
                                f"(killed); last output: {_tail(err or out)}")
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_TAG):
            try:
                return ProbeOutcome.from_dict(json.loads(line[len(RESULT_TAG):]))
            except (ValueError, KeyError, TypeError) as exc:
                return _failed(backend, f"unreadable probe result ({exc})")
    return _failed(backend, f"the probe exited with status {child.returncode} and no result: "
                            f"{_tail(err or out)}")


def _tail(text: str, lines: int = 3) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(kept) or "(nothing)"


def _failed(backend: str, reason: str) -> ProbeOutcome:
    return ProbeOutcome(backend=backend, error=reason, results=cannot_tell_all(reason, backend))


def run_probes(backend: str, vllm_path: list[str], timeout: float) -> list[ProbeOutcome]:
    """The chosen back end; on real CUDA with one GPU, the simulator answers the device question.

    The fresh-thread-device hazard needs two devices. With fewer, the CUDA row says so ("cannot
    tell") and a simulator run of the same vLLM code adds the answer, labelled ``sim``.
    """
    first = run_probe(backend, vllm_path, timeout)
    outcomes = [first]
    needs_devices = any(r.hazard == FRESH_THREAD_DEVICE.id and r.verdict is Verdict.CANNOT_TELL
                        and "needs 2 devices" in r.evidence for r in first.results)
    if backend == "cuda" and first.error is None and needs_devices:
        sim = run_probe("sim", vllm_path, timeout)
        keep: list[HazardResult] = [r for r in sim.results if r.hazard == FRESH_THREAD_DEVICE.id]
        outcomes.append(ProbeOutcome(backend="sim", devices=sim.devices, vllm=sim.vllm,
                                     results=keep, error=sim.error, stubs=sim.stubs))
    return outcomes


def diagnose(request: ProbeRequest) -> DoctorReport:
    """Environment report plus (unless ``probe`` is off) the behavioural probe."""
    for path in request.vllm_path:
        if not Path(path).is_dir():
            raise ValueError(f"--vllm-path {path}: not a directory")
    if request.timeout <= 0:
        raise ValueError(f"--timeout must be > 0, got {request.timeout}")
    env = environment.collect()
    probes: list[ProbeOutcome] = []
    if request.probe:
        backend = choose_backend(request.backend, collectives=False).name
        probes = run_probes(backend, request.vllm_path, request.timeout)
    return DoctorReport(environment=env, probes=probes,
                        vllm_path=[str(Path(p).resolve()) for p in request.vllm_path])
