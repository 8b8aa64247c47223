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
                       resolve: Callable[[Any], Any], device_expr: str, accessor: str,
                       current_of_device: Callable[[int], CurrentStreamTuple] | None = None,
                       current_of_comm: Callable[[Any, int], CurrentStreamTuple] | None = None,
                       skip_expr: str = "False", fixed_device: bool = False) -> bool:
    """Patch ``cls.method`` so each call is audited before it runs.

    ``device_expr`` is a Python expression over ``self`` giving the device index the
    communicator's tensors live on (``"self.device.index"``). Give ``current_of_device``
    (CUDA: ``torch._C._cuda_getCurrentStream``) or, where the truth depends on the communicator
    (the simulator's machine), ``current_of_comm``. ``skip_expr`` (over ``self``) marks calls
    that launch nothing, e.g. vLLM's ``self.disabled`` communicators: they are not audited.
    ``fixed_device`` says the communicator's device never changes (an NCCL communicator is
    bound to one device for life): ``device_expr`` is then read once per instance and kept in
    its ``_streamcheck_device`` attribute, one dict lookup per call instead of two attribute
    reads through torch (about 30 ns of the audit's cost per launch).

    The wrapper is generated with the callee's own signature (as :mod:`dataclasses` generates
    ``__init__``): no ``*args``/``**kwargs`` repacking and no helper calls on the hot path,
    which halves its cost against a generic wrapper.
    """
    if not hasattr(cls, method):
        return False
    if (current_of_device is None) == (current_of_comm is None):
        raise ValueError("give exactly one of current_of_device / current_of_comm")
    original = getattr(cls, method)
    params, call = _signature_source(original)
    if params is None:
        raise ValueError(f"{cls.__name__}.{method} has no 'stream' parameter to audit")
    current = ("_current_of_device(target)" if current_of_device is not None
               else "_current_of_comm(self, target)")
    target = f"target = {device_expr}"
    if fixed_device and getattr(cls, "__dictoffset__", 0):  # instances can keep an attribute
        target = f"""try:
                target = self._streamcheck_device
            except AttributeError:
                target = self._streamcheck_device = {device_expr}"""
    source = f"""
def make(original):
    def audited({params}):
        auditor = _gate.auditor
        if auditor is None or {skip_expr}:
            return original({call})
        try:
            {target}
            implicit = stream is None
            if implicit:
                stream = _resolve(self)
                cur = {current}
            sid = stream.stream_id
            sdev = stream.device_index
        except Exception as exc:
            _warn(_op, exc)
            return original({call})
        next(auditor.counter)
        if implicit:
            if sid == cur[0] and sdev == target and (sid or _get_ident() == _main):
                return original({call})
            auditor.admit(_op, sdev, sid, stream, cur[1], cur[0], target, True, _accessor,
                          counted=True)
        else:
            if sdev == target and (sid or _get_ident() == _main):
                return original({call})
            auditor.admit(_op, sdev, sid, stream, None, None, target, False, _accessor,
                          counted=True)
        return original({call})
    return _functools.wraps(original)(audited)
"""
    namespace: dict[str, Any] = {
        "_gate": gate, "_resolve": resolve, "_current_of_device": current_of_device,
        "_current_of_comm": current_of_comm, "_warn": warn_cannot_audit, "_op": op,
        "_accessor": accessor, "_get_ident": threading.get_ident,
        "_main": threading.main_thread().ident, "_functools": functools,
        **_defaults_namespace(original),
    }
    exec(compile(source, f"<streamcheck wrapper of {cls.__name__}.{method}>", "exec"), namespace)
    return registry.patch(cls, method, namespace["make"])


def _defaults_namespace(fn: Any) -> dict[str, Any]:
    sig = inspect.signature(fn)
    return {f"_default_{name}": p.default for name, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty}


def _signature_source(fn: Any) -> tuple[str | None, str]:
    """(parameter list, call arguments) reproducing ``fn``'s signature, or (None, "")."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None, ""
    if "stream" not in sig.parameters:
        return None, ""
    params: list[str] = []
    call: list[str] = []
    star_done = False
    kinds = inspect.Parameter
    for name, p in sig.parameters.items():
        default = f"=_default_{name}" if p.default is not kinds.empty else ""
        if p.kind is kinds.POSITIONAL_ONLY or p.kind is kinds.POSITIONAL_OR_KEYWORD:
            params.append(f"{name}{default}")
            call.append(name)
        elif p.kind is kinds.VAR_POSITIONAL:
            params.append(f"*{name}")
            call.append(f"*{name}")
            star_done = True
        elif p.kind is kinds.KEYWORD_ONLY:
            if not star_done:
                params.append("*")
                star_done = True
            params.append(f"{name}{default}")
            call.append(f"{name}={name}")
        elif p.kind is kinds.VAR_KEYWORD:
            params.append(f"**{name}")
            call.append(f"**{name}")
    return ", ".join(params), ", ".join(call)
