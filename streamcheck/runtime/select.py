"""Choose the repro backend in one place, with a visible label and a clear fallback message."""

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


def choose_backend(requested: str) -> BackendChoice:
    if requested not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {requested!r}; choose one of {BACKENDS}")
    if importlib.util.find_spec("torch") is None:
        raise BackendUnavailable(TORCH_MISSING)
    from streamcheck.runtime import cuda

    gpus = cuda.device_count()
    if requested == "sim":
        return BackendChoice("sim", 0, "simulator requested (--backend sim): results are sim")
    nccl_problem = _nccl_problem() if gpus else "no CUDA GPU is visible"
    if requested == "cuda":
        if nccl_problem:
            raise BackendUnavailable(f"--backend cuda cannot run: {nccl_problem}")
        return BackendChoice("cuda", gpus, f"real CUDA on {gpus} GPU(s)")
    if nccl_problem:
        return BackendChoice(
            "sim", 0, f"{nccl_problem}: running on the CPU simulator; results are labelled sim"
        )
    return BackendChoice("cuda", gpus, f"real CUDA on {gpus} GPU(s)")


def _nccl_problem() -> str:
    try:
        from streamcheck.runtime.nccl import NcclLibrary

        NcclLibrary()
    except Exception as exc:  # NcclUnavailable, or an OSError from a broken library
        return f"GPUs are visible but NCCL did not load ({exc})"
    return ""
