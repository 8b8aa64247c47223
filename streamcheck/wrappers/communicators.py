"""Instrument communicator classes and connector methods (CUDA), through the shared registry."""

from __future__ import annotations

import functools
from typing import Any

from streamcheck.wrappers.launches import wrap_stream_method
from streamcheck.wrappers.state import GATE, LOCK, REGISTRY


def instrument_communicator(cls: type, methods: tuple[str, ...], *, op_prefix: str,
                            resolve: Any, device_expr: str, accessor: str,
                            skip_expr: str = "False") -> list[str]:
    """Audit a CUDA communicator class whose methods take ``stream=None``.

    ``resolve(comm)`` must return the stream the method would pick for ``stream=None`` (the
    same accessor it calls), ``device_expr`` an expression over ``self`` for the device index
    its tensors live on, e.g. ``"self.device.index"``. Returns the methods patched. Only while
    an audit is installed; uninstall restores them.
    """
    from streamcheck.runtime import cuda

    reader = cuda.current_stream_reader()
    if reader is None or GATE.auditor is None:
        return []
    with LOCK:
        return [m for m in methods if wrap_stream_method(
            REGISTRY, GATE, cls, m, f"{op_prefix}.{m}", resolve=resolve, device_expr=device_expr,
            accessor=accessor, current_of_device=reader, skip_expr=skip_expr,
            fixed_device=True)]


def instrument_connector_method(cls: type, method: str, op: str) -> bool:
    """Audit ``cls.method`` as a connector launch on the calling thread's current stream."""
    from streamcheck.wrappers.user_launch import launch

    def make(original: Any) -> Any:
        @functools.wraps(original)
        def audited(*args: Any, **kwargs: Any) -> Any:
            if GATE.auditor is not None:
                launch(op).check()
            return original(*args, **kwargs)

        return audited

    with LOCK:
        if GATE.auditor is None:
            return False
        return REGISTRY.patch(cls, method, make)
