"""Audit methods that launch on a stream, resolving ``stream=None`` exactly as the callee will.

vLLM's ``PyNcclCommunicator`` methods, our own NCCL binding and the simulator's communicator
all take ``stream=None`` and then ask an accessor for "the current stream". The wrapper asks
the same accessor first, audits the launch with that stream, and passes it on explicitly, so
``assert`` mode can stop the launch before the callee reaches NCCL.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from streamcheck.wrappers.gate import Gate
from streamcheck.wrappers.registry import PatchRegistry

CurrentOf = Callable[[Any, int], tuple[int, int, int]]
"""(callee self, device) -> the calling thread's real current stream there: (id, device, type)."""


def wrap_stream_method(registry: PatchRegistry, gate: Gate, cls: type, method: str, op: str,
                       resolve: Callable[[Any], Any], device_of: Callable[[Any], int],
                       current_of: CurrentOf, accessor: str) -> bool:
    """Patch ``cls.method`` so each call is audited before it runs."""
    if not hasattr(cls, method):
        return False
    original = getattr(cls, method)
    try:
        params = list(inspect.signature(original).parameters)
        position = params.index("stream") - 1  # minus self
    except (TypeError, ValueError):
        position = -1

    def make(original: Any) -> Any:
        @functools.wraps(original)
        def audited(self: Any, *args: Any, **kwargs: Any) -> Any:
            auditor = gate.auditor
            if auditor is None:
                return original(self, *args, **kwargs)
            if 0 <= position < len(args):
                stream = args[position]
                if stream is None:
                    stream = resolve(self)
                    args = (*args[:position], stream, *args[position + 1:])
                    implicit = True
                else:
                    implicit = False
            else:
                stream = kwargs.get("stream")
                implicit = stream is None
                if implicit:
                    stream = kwargs["stream"] = resolve(self)
            target = device_of(self)
            current = current_of(self, target)
            auditor.admit(op, stream.device_index, stream.stream_id, stream, current[1],
                          current[0], target, implicit, accessor)
            return original(self, *args, **kwargs)

        return audited

    return registry.patch(cls, method, make)
