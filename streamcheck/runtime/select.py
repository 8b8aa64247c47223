"""Choose the backend in one place, with a visible label and a clear fallback message.

``streamcheck run`` (ranks that talk through NCCL) and ``streamcheck doctor`` (one probe process)
both choose here; ``collectives`` says which of the two is asking.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

BACKENDS = ("auto", "cuda", "sim")
# Both backends run ranks on torch (the simulator on CPU tensors); the light install has none.
TORCH_MISSING = ("the repros run on PyTorch, which is not installed here: install the torch "
                 "your engine uses, or `pip install 'streamcheck[torch]'`")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "cuda" | "sim"
    gpus: int
    note: str  # shown to the user: why this backend


def choose_backend(requested: str, *, collectives: bool = True) -> BackendChoice:
    """cuda when it can run, else the simulator (``auto``); an explicit ``cuda`` that cannot
    run is an error saying why.

    ``collectives``: the caller's ranks talk through NCCL (the repros), so PyTorch is required
    and cuda also needs NCCL to load. Without (the doctor's one-process probe) a visible GPU is
    enough, and a missing PyTorch leaves the simulator, whose child then says what it lacks.
    """
    if requested not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {requested!r}; choose one of {BACKENDS}")
    has_torch = importlib.util.find_spec("torch") is not None
    if collectives and not has_torch:
        raise BackendUnavailable(TORCH_MISSING)
    if requested == "sim":
        return BackendChoice("sim", 0, "simulator requested (--backend sim): results are sim")
    from streamcheck.runtime import cuda

    gpus = cuda.device_count() if has_torch else 0
    if not gpus:
        problem = "no CUDA GPU is visible" + ("" if has_torch else " (PyTorch is not installed)")
    else:
        problem = _nccl_problem() if collectives else ""
    if requested == "cuda":
        if problem:
            raise BackendUnavailable(f"--backend cuda cannot run: {problem}")
        return BackendChoice("cuda", gpus, f"real CUDA on {gpus} GPU(s)")
    if problem:
        return BackendChoice(
            "sim", 0, f"{problem}: running on the CPU simulator; results are labelled sim"
        )
    return BackendChoice("cuda", gpus, f"real CUDA on {gpus} GPU(s)")


def _nccl_problem() -> str:
    try:
        from streamcheck.runtime.nccl import NcclLibrary

        NcclLibrary()
    except Exception as exc:  # NcclUnavailable, or an OSError from a broken library
        return f"GPUs are visible but NCCL did not load ({exc})"
    return ""
