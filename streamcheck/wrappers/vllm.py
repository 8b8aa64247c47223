"""Audit vLLM: ``PyNcclCommunicator`` launches and KV-connector methods, when vLLM is importable.

pynccl imports ``current_stream`` by name and calls it for ``stream=None``; the wrapper calls
the same name on the same module at call time, so whatever vLLM version (module-global cache
in <= 0.9.2, thread-local after) and whatever patch is live, the stream audited is exactly the
stream pynccl is about to launch on. Connector methods (``start_load_kv``, ``save_kv_layer``,
...) are audited as connector launches on the calling thread's current stream.
"""

from __future__ import annotations

from typing import Any

from streamcheck.vllm_compat import VllmUnavailable, import_vllm_module
from streamcheck.wrappers.communicators import (
    instrument_communicator,
    instrument_connector_method,
)

PYNCCL_METHODS = (
    "all_reduce", "all_gather", "all_gatherv", "reduce_scatter", "reduce_scatterv", "reduce",
    "scatter", "send", "recv", "broadcast", "batch_isend_irecv",
)
CONNECTOR_METHODS = (
    "start_load_kv", "wait_for_layer_load", "save_kv_layer", "wait_for_save",
)


def instrument_pynccl() -> list[str]:
    pynccl = import_vllm_module("vllm.distributed.device_communicators.pynccl")
    cls = pynccl.PyNcclCommunicator
    methods = tuple(m for m in PYNCCL_METHODS if "stream" in _params(getattr(cls, m, None)))
    return instrument_communicator(
        cls, methods, op_prefix="vllm.pynccl", resolve=lambda comm: pynccl.current_stream(),
        device_expr="self.device.index", skip_expr="self.disabled",
        accessor=f"vllm current_stream() ({getattr(pynccl.current_stream, '__module__', '?')})",
    )


def _params(fn: Any) -> tuple[str, ...]:
    import inspect

    if fn is None:
        return ()
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


def _connector_classes(base: type) -> list[type]:
    seen: list[type] = []
    todo = [base]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return seen


def instrument_connectors() -> list[str]:
    """Audit the connector methods of every KVConnectorBase_V1 subclass defined so far."""
    base_module = import_vllm_module("vllm.distributed.kv_transfer.kv_connector.v1.base")
    patched = []
    for cls in _connector_classes(base_module.KVConnectorBase_V1):
        for method in CONNECTOR_METHODS:
            if method in cls.__dict__ and instrument_connector_method(
                    cls, method, op=f"connector.{cls.__name__}.{method}"):
                patched.append(f"{cls.__name__}.{method}")
    return patched


def instrument_vllm() -> dict[str, list[str]]:
    """Everything that can be audited in the installed vLLM; parts that cannot are reported."""
    done: dict[str, list[str]] = {}
    for part, fn in (("pynccl", instrument_pynccl), ("connectors", instrument_connectors)):
        try:
            done[part] = fn()
        except VllmUnavailable as exc:
            done[part] = [f"unavailable: {exc}"]
    return done
