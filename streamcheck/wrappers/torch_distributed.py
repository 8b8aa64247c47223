"""Audit ``torch.distributed`` collectives and point-to-point calls.

ProcessGroupNCCL reads the calling thread's current stream in C++ and orders its own NCCL
stream after it with an event, so a cache leak in Python cannot misroute these launches: the
module-global leak gives zero findings here, which is correct. What can still go wrong is who
calls: a helper thread still on the legacy default stream while the engine computes on another
(``default-stream-in-worker``). Each call is audited with the thread's real current stream on
the tensor's device (the main engine thread's is not read: the rule spares that thread, so
its call is only counted); CPU tensors (gloo) are not audited.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

from streamcheck.wrappers import speedups
from streamcheck.wrappers.gate import Gate
from streamcheck.wrappers.generated import (
    defaults_namespace,
    globals_for,
    parameter_names,
    signature_source,
)
from streamcheck.wrappers.launches import site_counter
from streamcheck.wrappers.registry import PatchRegistry


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


def wrap_tensor_function(registry: PatchRegistry, gate: Gate, module: Any, name: str, op: str,
                         reader: Callable[[int], tuple[int, int, int]], target: str = "") -> bool:
    """Audit ``module.name`` on the thread's current stream of its first tensor's device."""

    def make(original: Any) -> Any:
        owner_auditor, counter = site_counter(gate, op, target)
        get_ident = threading.get_ident

        @functools.wraps(original)
        def audited(*args: Any, **kwargs: Any) -> Any:
            auditor = gate.auditor
            if auditor is not None:
                tensor = _first_tensor(args, kwargs)
                device = tensor.get_device() if tensor is not None else -1
                if device >= 0:
                    next(counter if auditor is owner_auditor
                         else auditor.coverage.counter(op, target))
                    # The thread's own current stream on the tensor's device: only the
                    # default-stream rule can object, and it spares engine threads (the
                    # main engine thread, the common caller, told by one attribute read
                    # before the stream is read).
                    ident = get_ident()
                    if ident != auditor.main_engine:
                        sid, sdev, _ = reader(device)
                        if sid == 0 and not auditor.is_engine_thread(ident):
                            auditor.admit(op, sdev, sid, None, sdev, sid, device, False,
                                          counted=True)
            return original(*args, **kwargs)

        compiled = speedups.active()
        if compiled is None:
            return audited
        speedups.read_streams_natively(reader)  # torch's tuple reader: answered in C++
        # In C, a call whose first argument is a CUDA tensor and whose thread's current stream
        # there is not a default stream, or is one and the thread is the main engine thread,
        # is counted and let through; every other, ``audited``.
        hook = compiled.GuardedCall(compiled.TENSOR_CALL, gate, owner_auditor, counter, original,
                                    audited, reader, None, None)
        checked = checked_wrapper(original, hook.passes, audited)
        if checked is not None:
            return checked
        functools.update_wrapper(hook, original)
        return hook

    return registry.patch(module, name, make)


#: The names a checked wrapper's code uses besides its parameters: a function with a parameter
#: of one of these names keeps the compiled hook itself.
_WRAPPER_NAMES = frozenset({"_sc_original", "_sc_slow", "_check_tensor", "_functools"})


def checked_wrapper(original: Any, passes: Callable[[Any], bool],
                    slow: Callable[..., Any]) -> Callable[..., Any] | None:
    """``original`` behind a generated wrapper with its signature that asks ``passes`` (the
    compiled hook's plain test) about its first argument, then calls ``original`` itself or
    hands the call to ``slow``; None where the signature cannot be read, names one of the
    wrapper's own names or starts with no positional parameter (the hook itself is installed
    then).

    Python calls Python here, as the caller calls ``original`` unaudited: the interpreter
    pushes a frame. The hook called as the function entered the interpreter again from C to
    run ``original``, code that an engine's other work leaves cold
    (scripts/bench_hook_instructions.py, its ``distributed`` paths). The signature is the
    one ``inspect`` gives, behind ``__wrapped__``: most of torch's collectives are a logging
    wrapper taking ``(*args, **kwargs)`` (``_exception_logger``), and a wrapper of that
    signature built a tuple and a dict at every call (about 1,000 instructions more, and more
    cold lines than the named one). So the logging wrapper gets every argument positionally,
    the defaults filled in: the function behind it gets the same values; only the dict its
    debug log makes of a failed call's keywords is emptier."""
    params, call, _ = signature_source(original)
    if params is None or parameter_names(original) & _WRAPPER_NAMES:
        return None
    first = _first_argument(original)
    if first is None:
        return None
    source = f"""
def make(_sc_original, _sc_slow):
    def audited({params}):
        if _check_tensor({first}):
            return _sc_original({call})
        return _sc_slow({call})
    return _functools.wraps(_sc_original)(audited)
"""
    namespace = {"_check_tensor": passes, "_functools": functools,
                 **defaults_namespace(original)}
    name = getattr(original, "__qualname__", "a collective")
    code = compile(source, f"<streamcheck checked wrapper of {name}>", "exec")
    shell = globals_for(code, namespace, first=("_check_tensor",))
    exec(code, shell)
    return shell["make"](original, slow)


def _first_argument(original: Any) -> str | None:
    """The expression, in a wrapper of ``original``'s signature, of its first argument: the
    first parameter, or for ``*args`` first its first item; None for any other signature."""
    try:
        first = next(iter(inspect.signature(original).parameters.values()), None)
    except (TypeError, ValueError):
        return None
    kinds = inspect.Parameter
    if first is None:
        return None
    if first.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD):
        return first.name
    if first.kind is kinds.VAR_POSITIONAL:
        return f"{first.name}[0] if {first.name} else None"
    return None
