"""Audit methods that launch on a stream, resolving ``stream=None`` exactly as the callee will.

vLLM's ``PyNcclCommunicator`` methods, our own NCCL binding and the simulator's communicator
all take ``stream=None`` and then ask an accessor for "the current stream". The wrapper asks
the same accessor first, audits the launch with that stream, and passes it on explicitly, so
``assert`` mode can stop the launch before the callee reaches NCCL (and the callee does not
ask the accessor a second time).

The wrapper's inline test is the hot path: it lets a launch through only when
:meth:`Auditor.admit` would (same device, the thread's real current stream for an implicit
launch, and the default stream only from the main thread); everything else goes to ``admit``,
which applies the rules. tests/core/test_fast_path.py checks that implication.
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings
from collections.abc import Callable
from typing import Any

from streamcheck.wrappers.gate import Gate
from streamcheck.wrappers.registry import PatchRegistry

CurrentStreamTuple = tuple[int, int, int]
"""The calling thread's real current stream on a device: (stream id, device, device type)."""


_warned: set[tuple[str, str]] = set()


def warn_cannot_audit(op: str, exc: Exception) -> None:
    """Say once per (op, reason) that a launch could not be audited, and why."""
    key = (op, type(exc).__name__)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(
        f"streamcheck could not audit {op}: {type(exc).__name__}: {exc}. The call goes ahead "
        "unaudited (is it given CUDA tensors on a machine with a GPU?)",
        RuntimeWarning, stacklevel=3,
    )


def wrap_stream_method(registry: PatchRegistry, gate: Gate, cls: type, method: str, op: str,
                       resolve: Callable[[Any], Any], device_of: Callable[[Any], int],
                       accessor: str,
                       current_of_device: Callable[[int], CurrentStreamTuple] | None = None,
                       current_of_comm: Callable[[Any, int], CurrentStreamTuple] | None = None,
                       ) -> bool:
    """Patch ``cls.method`` so each call is audited before it runs.

    Give ``current_of_device`` (CUDA: ``torch._C._cuda_getCurrentStream``) or, where the truth
    depends on the communicator (the simulator's machine), ``current_of_comm``.
    """
    if not hasattr(cls, method):
        return False
    if (current_of_device is None) == (current_of_comm is None):
        raise ValueError("give exactly one of current_of_device / current_of_comm")
    try:
        params = list(inspect.signature(getattr(cls, method)).parameters)
        position = params.index("stream") - 1  # minus self
    except (TypeError, ValueError):
        position = -1
    main = threading.main_thread().ident
    get_ident = threading.get_ident

    def make(original: Any) -> Any:
        @functools.wraps(original)
        def audited(self: Any, *args: Any, **kwargs: Any) -> Any:
            auditor = gate.auditor
            if auditor is None:
                return original(self, *args, **kwargs)
            if 0 <= position < len(args):  # stream passed positionally: rare, move it
                kwargs["stream"] = args[position]
                args = args[:position] + args[position + 1:]
            stream = kwargs.get("stream")
            try:
                target = device_of(self)
                implicit = stream is None
                if implicit:
                    stream = resolve(self)
                    cur = (current_of_device(target) if current_of_device is not None
                           else current_of_comm(self, target))  # type: ignore[misc]
                sid = stream.stream_id
                sdev = stream.device_index
            except Exception as exc:  # the audit must never be what breaks the call
                warn_cannot_audit(op, exc)
                return original(self, *args, **kwargs)
            next(auditor.counter)
            if implicit:
                kwargs["stream"] = stream
                if sid == cur[0] and sdev == target and (sid or get_ident() == main):
                    return original(self, *args, **kwargs)
                auditor.admit(op, sdev, sid, stream, cur[1], cur[0], target, True, accessor,
                              counted=True)
            else:
                if sdev == target and (sid or get_ident() == main):
                    return original(self, *args, **kwargs)
                auditor.admit(op, sdev, sid, stream, None, None, target, False, accessor,
                              counted=True)
            return original(self, *args, **kwargs)

        return audited

    return registry.patch(cls, method, make)
