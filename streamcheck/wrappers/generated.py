"""Pieces of the wrappers generated with a callee's own signature (as :mod:`dataclasses`
generates ``__init__``): the parameter list and call that reproduce it, its defaults as names,
and the small globals the generated code reads. A generated wrapper passes its arguments on by
the callee's own parameters, with no ``*args``/``**kwargs`` repacking, and Python calls
Python: the interpreter pushes a frame, where a hook written in C entered the interpreter
again for the callee."""

from __future__ import annotations

import inspect
import types
from typing import Any


def globals_for(code: types.CodeType, namespace: dict[str, Any],
                first: tuple[str, ...] = ()) -> dict[str, Any]:
    """The globals a generated wrapper needs: only the names its code (and the code nested in
    it) reads from ``namespace``, ``first`` first. A launch reads its globals through their
    dict's entries, and after an engine's other work those entries are out of the CPU's
    caches: in a small dict, with the launch's own names inserted first, they share one or
    two cache lines, where the full namespace (dozens of names, defaults among them) spread
    them over several."""
    wanted: set[str] = set()
    pending = [code]
    while pending:
        current = pending.pop()
        wanted.update(current.co_names)
        pending.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    order = [n for n in first if n in wanted] + sorted(wanted.difference(first))
    return {n: namespace[n] for n in order if n in namespace}


def defaults_namespace(fn: Any) -> dict[str, Any]:
    """``fn``'s defaults under the names ``signature_source`` gives them (``_default_<name>``),
    for the generated code's globals."""
    sig = inspect.signature(fn)
    return {f"_default_{name}": p.default for name, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty}


def signature_source(fn: Any) -> tuple[str | None, str, bool]:
    """(parameter list, call arguments, has a ``stream`` parameter) reproducing ``fn``'s
    signature as ``inspect`` gives it (behind a ``functools.wraps`` wrapper's ``__wrapped__``),
    or (None, "", False) when it cannot be read."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None, "", False
    params: list[str] = []
    call: list[str] = []
    star_done = False
    kinds = inspect.Parameter
    positional_only = [p.kind for p in sig.parameters.values()].count(kinds.POSITIONAL_ONLY)
    for name, p in sig.parameters.items():
        default = f"=_default_{name}" if p.default is not kinds.empty else ""
        if p.kind is kinds.POSITIONAL_ONLY or p.kind is kinds.POSITIONAL_OR_KEYWORD:
            params.append(f"{name}{default}")
            call.append(name)
            positional_only -= p.kind is kinds.POSITIONAL_ONLY
            if p.kind is kinds.POSITIONAL_ONLY and not positional_only:
                params.append("/")  # the last one: a keyword of its name goes to **kwargs
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
    return ", ".join(params), ", ".join(call), "stream" in sig.parameters


def parameter_names(fn: Any) -> set[str]:
    """The names ``fn``'s parameters bind in a generated function of its signature (empty
    where the signature cannot be read): a generated body must not use them for its own."""
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def checked_by_compiled_code(wrapper: Any) -> bool:
    """Whether ``wrapper`` (a patched method or function) is a generated one that asks
    compiled code: ``_speedups.StreamCheck`` for a launch, a ``GuardedCall``'s plain test for a
    ``torch.distributed`` call. For tests and benchmarks that must know which wrapper they
    exercise."""
    names = getattr(wrapper, "__globals__", {})
    return any(type(getattr(names.get(name), "__self__", None)).__name__ == kind
               for name, kind in (("_check_resolved", "StreamCheck"),
                                  ("_check_tensor", "GuardedCall")))
