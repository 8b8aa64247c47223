"""Install and uninstall the audit: the one place that decides what gets patched.

``install(mode)`` resolves the settings (argument, else ``STREAMCHECK``, else
``[tool.streamcheck]``; see :mod:`streamcheck.settings`), builds the process's
:class:`~streamcheck.core.auditor.Auditor`, hooks torch's stream and event API, and asks the
import watch for every launch site: the built-in table (vLLM and SGLang pynccl, the KV
connector API, ``torch.distributed``, our own NCCL binding) plus the user's targets. A site
whose module is imported already is patched at once; any other the moment it is imported,
whichever activation path started the audit (``install()``, the start-up hook, the pytest
plugin, vLLM's ``general_plugins``). ``off`` patches nothing. Calling ``install`` again is
harmless; ``uninstall`` restores every patched attribute, late ones included.
"""

from __future__ import annotations

import threading
from typing import Any

from streamcheck.core import coverage
from streamcheck.core.auditor import Auditor
from streamcheck.core.modes import Mode, parse_mode
from streamcheck.settings import ENV_MODE, AuditSettings
from streamcheck.wrappers import events, speedups, streams
from streamcheck.wrappers.imports import ImportWatch
from streamcheck.wrappers.instrument import apply_site
from streamcheck.wrappers.launches import wrap_stream_method
from streamcheck.wrappers.sites import BUILTIN_SITES, LaunchSite
from streamcheck.wrappers.state import GATE, LOCK, REGISTRY, ROLES, current_auditor

__all__ = [
    "ENV_MODE", "current_auditor", "install", "installed_patches", "instrument",
    "instrument_sim", "mode_from_env", "uninstall",
]

_lock = LOCK
_registry = REGISTRY
_gate = GATE
_watch = ImportWatch()


def mode_from_env(environ: dict[str, str] | None = None) -> Mode:
    return AuditSettings.load(environ, pyproject=False).mode


def install(mode: Mode | str | None = None, *, select: frozenset[str] | None = None,
            runtime: str | None = None,
            settings: AuditSettings | None = None) -> Auditor | None:
    """Start auditing this process in ``mode`` (default: from the settings' sources).

    ``runtime`` names what the report says streams were read from; by default the stream
    reader in use: "cuda", "sim" under the simulator, "none" for a torch without CUDA.
    """
    resolved = None if mode is None else parse_mode(mode, "install(mode=...)")
    with _lock:
        auditor = _gate.auditor
        if auditor is not None and resolved is not None and resolved.active:
            auditor.mode = resolved
            return auditor
        if settings is None:
            settings = AuditSettings.load(mode=resolved, select=select)
        if not settings.mode.active:
            uninstall()
            return None
        if auditor is not None:
            auditor.mode = settings.mode
            return auditor
        speedups.use(settings.core)  # before the book's switch log and any hook are made
        auditor = Auditor(settings.mode, select=settings.select,
                          runtime=runtime or _reader_name(), roles=ROLES)
        _gate.open(auditor)
        _install_torch_hooks()
        for site in (*BUILTIN_SITES, *settings.targets):
            instrument(site)
        return auditor


def instrument(site: LaunchSite) -> None:
    """Audit ``site`` now if its module is imported, else as soon as it is."""
    with _lock:
        auditor = _gate.auditor
        if auditor is None:
            return
        auditor.coverage.note_target(site.name, site.module, coverage.WAITING,
                                     source=site.source)
        _watch.watch(site.module, lambda module, site=site: apply_site(site, module))


def uninstall() -> None:
    """Restore every patched attribute and stop auditing."""
    with _lock:
        _gate.close()
        _watch.disarm()
        _registry.restore_all()


def installed_patches() -> int:
    return len(_registry)


def _install_torch_hooks() -> None:
    try:
        import torch
    except ImportError:
        return
    from streamcheck.runtime.cuda import stream_reader

    reader = stream_reader()
    home = streams.DeviceHome(_engine_device_now(torch, reader))
    streams.hook_set_stream(_registry, _gate, torch.cuda, "torch.cuda")
    streams.hook_stream_creation(_registry, _gate, torch.cuda.Stream, "torch.cuda", home)
    if reader is not None and torch.cuda.Stream.__module__.startswith("torch."):
        streams.fast_current_stream(_registry, torch.cuda)
    if reader is not None:
        events.hook_set_device(_registry, _gate, torch.cuda, reader, home)
        events.hook_event_record(_registry, _gate, torch.cuda.Event, reader)
        events.hook_wait_stream(_registry, _gate, torch.cuda.Stream, reader)
    streams.hook_accelerator_set_stream(_registry, _gate, getattr(torch, "accelerator", None))
    auditor = _gate.auditor
    if auditor is not None:
        # Events order nothing until the first declared access: hook their clocks only then.
        auditor.on_first_access(_hook_torch_events)


def _engine_device_now(torch: Any, reader: Any) -> int | None:
    """The engine's device when the audit starts after it was chosen (a plugin loaded late):
    the current device, read only where CUDA is already initialised (reading it earlier would
    initialise CUDA in a process that may yet fork) and only from an engine thread."""
    auditor = _gate.auditor
    if reader is None or auditor is None or not auditor.is_engine_thread(threading.get_ident()):
        return None
    try:
        return int(reader.current_device()) if torch.cuda.is_initialized() else None
    except Exception:
        return None


def _hook_torch_events() -> None:
    import torch

    from streamcheck.runtime.cuda import stream_reader
    from streamcheck.wrappers.user_launch import tensor_key

    reader = stream_reader()
    with _lock:
        if reader is not None and _gate.auditor is not None:
            events.hook_event_wait(_registry, _gate, torch.cuda.Event, reader)
            events.hook_host_waits(_registry, _gate, torch.cuda, torch.cuda.Stream,
                                   torch.cuda.Event, reader)
            events.hook_record_stream(_registry, _gate, torch.Tensor, tensor_key)


_TORCH_SURFACE = ("set_stream", "__new__", "__init__", "record", "wait", "wait_stream",
                  "current_stream", "synchronize", "query", "record_stream", "set_device")


def release_torch_hooks() -> bool:
    """Take the torch hooks off (the audit stays); True if there were any.

    For a process that replaces ``torch.cuda``'s stream surface after the audit started (the
    CPU simulator standing in for CUDA): release, replace, then :func:`rehook_torch`.
    """
    import torch

    with _lock:
        owners = (torch.cuda, torch.cuda.Stream, torch.cuda.Event, torch.Tensor,
                  getattr(torch, "accelerator", None))
        return sum(_registry.restore(o, _TORCH_SURFACE) for o in owners if o is not None) > 0


def rehook_torch() -> None:
    """Hook torch's (possibly replaced) stream surface for the running audit."""
    with _lock:
        if _gate.auditor is not None:
            _gate.auditor.runtime = _reader_name()
            _install_torch_hooks()


def _reader_name() -> str:
    from streamcheck.runtime.cuda import stream_reader

    reader = stream_reader()
    return reader.name if reader is not None else "none"


def instrument_sim(api: Any) -> None:
    """Audit one simulated process view (its set_stream, Stream class, communicators), read
    through the view's stream reader (``api.stream_reader()``)."""
    from streamcheck.runtime.sim.api import SimEvent
    from streamcheck.runtime.sim.comm import SimCommunicator

    with _lock:
        if _gate.auditor is None:
            return
        _gate.auditor.runtime = "sim"  # its launches and streams are the simulator's
        reader = api.stream_reader()
        streams.hook_set_stream(_registry, _gate, api, "sim.cuda")
        home = streams.DeviceHome()
        streams.hook_stream_creation(_registry, _gate, api.Stream, "sim.cuda", home)
        events.hook_set_device(_registry, _gate, api, reader, home)
        events.hook_event_record(_registry, _gate, SimEvent, reader)
        events.hook_event_wait(_registry, _gate, SimEvent, reader)
        events.hook_host_waits(_registry, _gate, api, api.Stream, SimEvent, reader)

        def current_of(comm: Any, device: int) -> tuple[int, int, int]:
            return comm.machine.current_stream_tuple(device)  # the communicator's machine

        for method in ("all_reduce", "send", "recv"):
            wrap_stream_method(
                _registry, _gate, SimCommunicator, method, f"sim.nccl.{method}",
                resolve="self.current_stream()",
                device_expr="self.device_index", accessor="SimCommunicator(current_stream=...)",
                current_of_comm=current_of, target="sim.nccl",
            )
        _gate.auditor.coverage.note_target("sim.nccl", "streamcheck.runtime.sim.comm",
                                           coverage.INSTRUMENTED,
                                           ["all_reduce", "send", "recv"])
