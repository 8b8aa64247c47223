"""Audit ``torch.distributed`` collectives and point-to-point calls.

ProcessGroupNCCL reads the calling thread's current stream in C++ and orders its own NCCL
stream after it with an event, so a cache leak in Python cannot misroute these launches: the
module-global leak gives zero findings here, which is correct. What can still go wrong is who
calls: a helper thread still on the legacy default stream while the engine computes on another
(``default-stream-in-worker``). Each call is audited with the thread's real current stream on
the tensor's device; CPU tensors (gloo) are not audited.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from streamcheck.wrappers.gate import Gate
from streamcheck.wrappers.registry import PatchRegistry

COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
    "reduce_scatter_tensor", "broadcast", "reduce", "all_to_all", "all_to_all_single",
    "send", "recv", "isend", "irecv", "batch_isend_irecv", "barrier", "gather", "scatter",
)


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    for value in (*args, *kwargs.values()):
        if hasattr(value, "get_device"):
            return value
        if isinstance(value, (list, tuple)) and value:
            head = value[0]
            if hasattr(head, "get_device"):
                return head
            tensor = getattr(head, "tensor", None)  # a P2POp
            if hasattr(tensor, "get_device"):
                return tensor
    return None


def instrument_torch_distributed(registry: PatchRegistry, gate: Gate, dist: Any,
                                 reader: Callable[[int], tuple[int, int, int]]) -> list[str]:
    """Patch each collective present in ``dist``; returns the names patched."""
    patched = []
    for name in COLLECTIVES:
        if not hasattr(dist, name):
            continue

        def make(original: Any, op: str = f"torch.distributed.{name}") -> Any:
            @functools.wraps(original)
            def audited(*args: Any, **kwargs: Any) -> Any:
                auditor = gate.auditor
                if auditor is not None:
                    tensor = _first_tensor(args, kwargs)
                    device = tensor.get_device() if tensor is not None else -1
                    if device >= 0:
                        sid, sdev, _ = reader(device)
                        auditor.admit(op, sdev, sid, None, sdev, sid, device, False)
                return original(*args, **kwargs)

            return audited

        if registry.patch(dist, name, make):
            patched.append(name)
    return patched
