"""Install and uninstall the audit: the one place that decides what gets patched.

``install(mode)`` reads the mode (argument, else the ``STREAMCHECK`` environment variable),
builds the process's :class:`~streamcheck.core.auditor.Auditor`, and patches stream hooks and
launch wrappers through one :class:`~streamcheck.wrappers.registry.PatchRegistry`. ``off``
patches nothing. Calling ``install`` again is harmless; ``uninstall`` restores everything.
"""

from __future__ import annotations

import os
from typing import Any

from streamcheck.core.auditor import Auditor
from streamcheck.core.modes import Mode, parse_mode
from streamcheck.wrappers import events, streams
from streamcheck.wrappers.communicators import (
    instrument_communicator,
    instrument_connector_method,
)
from streamcheck.wrappers.launches import wrap_stream_method
from streamcheck.wrappers.state import GATE, LOCK, REGISTRY, current_auditor

ENV_MODE = "STREAMCHECK"

__all__ = [
    "current_auditor", "install", "installed_patches", "instrument_communicator",
    "instrument_connector_method", "instrument_sim", "mode_from_env", "uninstall",
]

_lock = LOCK
_registry = REGISTRY
_gate = GATE


def mode_from_env(environ: dict[str, str] | None = None) -> Mode:
    environ = os.environ if environ is None else environ
    return parse_mode(environ.get(ENV_MODE, "off"), f"environment variable {ENV_MODE}")


def install(mode: Mode | str | None = None, *, select: frozenset[str] | None = None,
            runtime: str = "cuda") -> Auditor | None:
    """Start auditing this process in ``mode`` (default: from ``STREAMCHECK``)."""
    resolved = mode_from_env() if mode is None else parse_mode(mode, "install(mode=...)")
    with _lock:
        if not resolved.active:
            uninstall()
            return None
        auditor = _gate.auditor
        if auditor is not None:
            auditor.mode = resolved
            return auditor
        auditor = Auditor(resolved, select=select, runtime=runtime)
        _gate.auditor = auditor
        _install_torch_hooks()
        _install_nccl_binding()
        _install_torch_distributed()
        _install_vllm_if_imported()
        return auditor


def uninstall() -> None:
    """Restore every patched attribute and stop auditing."""
    with _lock:
        _gate.auditor = None
        _registry.restore_all()


def installed_patches() -> int:
    return len(_registry)


def _install_torch_hooks() -> None:
    try:
        import torch
    except ImportError:
        return
    streams.hook_set_stream(_registry, _gate, torch.cuda, "torch.cuda")
    streams.hook_stream_creation(_registry, _gate, torch.cuda.Stream, "torch.cuda")
    streams.hook_accelerator_set_stream(_registry, _gate, getattr(torch, "accelerator", None))
    events.hook_events(_registry, _gate, torch.cuda.Event, events.torch_stream_key)


def _install_torch_distributed() -> None:
    from streamcheck.runtime import cuda

    reader = cuda.current_stream_reader()
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if reader is None or not dist.is_available():
        return
    from streamcheck.wrappers.torch_distributed import instrument_torch_distributed

    instrument_torch_distributed(_registry, _gate, dist, reader)


def _install_vllm_if_imported() -> None:
    """Audit vLLM's communicators and connectors if vLLM is already imported.

    Importing vLLM here would cost seconds and pull its whole stack into processes that never
    use it; vLLM processes are reached by the ``vllm.general_plugins`` entry point instead,
    which runs after vLLM is imported, and anyone can call ``instrument_vllm()`` directly.
    """
    import sys

    if "vllm.distributed.device_communicators.pynccl" in sys.modules:
        from streamcheck.wrappers.vllm import instrument_vllm

        instrument_vllm()


def _install_nccl_binding() -> None:
    from streamcheck.runtime.nccl import NcclCommunicator

    instrument_communicator(
        NcclCommunicator,
        ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "send", "recv"),
        op_prefix="nccl", resolve=lambda comm: comm._current_stream(),
        device_expr="self.device.index", accessor="NcclCommunicator(current_stream=...)",
    )


def instrument_sim(api: Any) -> None:
    """Audit one simulated process view (its set_stream, Stream class, communicators)."""
    from streamcheck.runtime.sim.api import SimEvent
    from streamcheck.runtime.sim.comm import SimCommunicator

    with _lock:
        if _gate.auditor is None:
            return
        streams.hook_set_stream(_registry, _gate, api, "sim.cuda")
        streams.hook_stream_creation(_registry, _gate, api.Stream, "sim.cuda")
        events.hook_events(_registry, _gate, SimEvent, events.sim_stream_key)

        def current_of(comm: Any, device: int) -> tuple[int, int, int]:
            state = comm.machine.current_stream(device)
            return (state.stream_id, state.device, 1)

        for method in ("all_reduce", "send", "recv"):
            wrap_stream_method(
                _registry, _gate, SimCommunicator, method, f"sim.nccl.{method}",
                resolve=lambda comm: comm._current_stream(),
                device_expr="self.device_index", accessor="SimCommunicator(current_stream=...)",
                current_of_comm=current_of,
            )
