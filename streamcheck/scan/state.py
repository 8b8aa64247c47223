"""Which state a function shares with every thread, and whether that state holds a stream.

SC101 and SC102 ask two questions of different functions: "what shared state does this
function write or return?" and "is that state an accelerator stream?". Shared means one copy per
process:

- a module global, also through ``globals()["name"]``, an attribute of one or an item of one
  (``_streams[device]``, ``_state.stream``);
- a class attribute: ``cls.x`` in a classmethod, ``type(self).x``, ``self.__class__.x``, or
  ``C.x`` for a class ``C`` of the module.

Not shared: a ``threading.local()`` attribute, an item keyed by the current thread
(``d[threading.get_ident()]``, a ``WeakKeyDictionary`` keyed by ``current_thread()``), an
instance attribute, a local. A state name is ``G``, ``G.attr`` or ``C.attr``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from streamcheck.scan.index import FunctionInfo, ModuleIndex, globals_key
from streamcheck.scan.threads import body_nodes

#: Accelerator APIs whose value is a stream object.
STREAM_VALUES = frozenset({"current_stream", "Stream", "default_stream", "ExternalStream"})
#: Accelerator APIs that make their first argument the current stream.
_MAKES_CURRENT = frozenset({"stream", "set_stream", "StreamContext"})
_PER_THREAD_CALLS = frozenset({
    "threading.get_ident", "threading.get_native_id", "threading.current_thread",
    "_thread.get_ident",
})
_T = TypeVar("_T")
#: Decorators that memoise a function once for the whole process, whichever thread calls it.
_PROCESS_MEMOS = frozenset({"functools.lru_cache", "functools.cache"})


@dataclass(frozen=True)
class StateWrite:
    """One store into shared state: ``func`` is None for a module-level assignment."""

    state: str
    node: ast.AST
    value: ast.expr
    func: FunctionInfo | None


def mentions_accel_stream(index: ModuleIndex, expr: ast.AST | None) -> bool:
    """Does ``expr`` name torch's stream API (a value like ``torch.cuda.current_stream()``)?"""
    if expr is None:
        return False
    return any(
        isinstance(node, ast.Attribute | ast.Name) and index.api(node) in STREAM_VALUES
        for node in ast.walk(expr)
    )


def local_bindings(func: FunctionInfo) -> set[str]:
    """Names ``func`` binds locally (parameters and plain assignments not declared global)."""
    names = set(parameters(func))
    for node in body_nodes(func):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names - func.global_names


def parameters(func: FunctionInfo) -> list[str]:
    args = func.node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names.extend(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    return names


class SharedNames:
    """Module-level names a function sees as shared state: module names that are neither
    per-thread (``threading.local``) nor bound locally. A membership test, not a set built
    per function: building one per function made big modules quadratic."""

    __slots__ = ("_index", "_locals")

    def __init__(self, index: ModuleIndex, locals_: set[str]) -> None:
        self._index, self._locals = index, locals_

    def __contains__(self, name: object) -> bool:
        return (name in self._index.module_names and name not in self._locals
                and name not in self._index.thread_local_names)


def _memo(
    index: ModuleIndex, key: str, func: FunctionInfo,
    compute: Callable[[ModuleIndex, FunctionInfo], _T],
) -> _T:
    """``compute(index, func)`` once per function and question (several rules ask)."""
    per_func = index.memo.setdefault(key, {})
    assert isinstance(per_func, dict)
    if id(func.node) not in per_func:
        per_func[id(func.node)] = compute(index, func)
    return per_func[id(func.node)]


def _local_values(_index: ModuleIndex, func: FunctionInfo) -> dict[str, list[ast.expr]]:
    """What each plain local name of ``func`` is assigned (``x = v``, ``x: T = v``)."""
    values: dict[str, list[ast.expr]] = defaultdict(list)
    for node in body_nodes(func):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id].append(node.value)
        elif (
            isinstance(node, ast.AnnAssign) and node.value is not None
            and isinstance(node.target, ast.Name)
        ):
            values[node.target.id].append(node.value)
    return values


def _per_thread_names(index: ModuleIndex, func: FunctionInfo) -> set[str]:
    return {
        name
        for name, values in _memo(index, "local_values", func, _local_values).items()
        if any(_calls_per_thread(index, v) for v in values)
    }


def _calls_per_thread(index: ModuleIndex, expr: ast.AST) -> bool:
    return any(
        isinstance(node, ast.Call) and index.resolve(node.func) in _PER_THREAD_CALLS
        for node in ast.walk(expr)
    )


def is_per_thread_key(index: ModuleIndex, func: FunctionInfo | None, key: ast.AST) -> bool:
    """Is ``key`` (a subscript) the current thread: ``get_ident()``, or a local bound to it?"""
    if _calls_per_thread(index, key):
        return True
    if func is None:
        return False
    names = _memo(index, "per_thread_names", func, _per_thread_names)
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(key))


def _class_namespace(index: ModuleIndex, func: FunctionInfo | None, node: ast.AST) -> str | None:
    """``C`` when ``node`` names the class ``C`` itself (not an instance of it)."""
    if isinstance(node, ast.Name):
        if node.id in index.classes:
            return node.id
        if func is not None and func.cls is not None and node.id == "cls":
            return func.cls.name
        return None
    if func is None or func.cls is None:
        return None
    if isinstance(node, ast.Attribute) and node.attr == "__class__":
        is_self = isinstance(node.value, ast.Name) and node.value.id == "self"
        return func.cls.name if is_self else None
    if (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type"
        and len(node.args) == 1 and isinstance(node.args[0], ast.Name)
        and node.args[0].id == "self"
    ):
        return func.cls.name
    return None


def state_named(
    index: ModuleIndex, func: FunctionInfo | None, expr: ast.AST, shared: SharedNames,
    *, store: bool,
) -> str | None:
    """The shared state ``expr`` reads (``store=False``) or writes (``store=True``), or None."""
    if isinstance(expr, ast.Name):
        if func is not None and expr.id in func.global_names:
            return expr.id
        return expr.id if not store and expr.id in shared else None
    name = globals_key(expr)
    if name is not None:
        return name
    if isinstance(expr, ast.Subscript):
        if is_per_thread_key(index, func, expr.slice):
            return None
        return state_named(index, func, expr.value, shared, store=False)
    if isinstance(expr, ast.Attribute):
        base = expr.value
        if isinstance(base, ast.Name) and base.id in shared:
            return f"{base.id}.{expr.attr}"
        owner = _class_namespace(index, func, base)
        return f"{owner}.{expr.attr}" if owner is not None else None
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
        # ``G.get(device)``, ``G.setdefault(device, ...)``, ``globals().get("name")``.
        if expr.func.attr not in ("get", "setdefault") or not expr.args:
            return None
        if is_per_thread_key(index, func, expr.args[0]):
            return None
        holder = expr.func.value
        if isinstance(holder, ast.Call) and isinstance(holder.func, ast.Name):
            if holder.func.id == "globals" and isinstance(expr.args[0], ast.Constant):
                return str(expr.args[0].value)
            return None
        return state_named(index, func, holder, shared, store=False)
    return None


def returned_candidates(value: ast.expr) -> Iterator[ast.expr]:
    if isinstance(value, ast.BoolOp):
        for operand in value.values:
            yield from returned_candidates(operand)
    elif isinstance(value, ast.IfExp):
        yield from returned_candidates(value.body)
        yield from returned_candidates(value.orelse)
    else:
        yield value


def _returned_exprs(index: ModuleIndex, func: FunctionInfo
                    ) -> Iterator[tuple[ast.Return, ast.expr]]:
    """What each ``return`` of ``func`` may hand back: every branch of its value (``a or b``,
    ``a if c else b``) and, for a local name, each value assigned to that local."""
    values = _memo(index, "local_values", func, _local_values)
    for node in body_nodes(func):
        if not isinstance(node, ast.Return) or node.value is None:
            continue
        for expr in returned_candidates(node.value):
            yield node, expr
            if isinstance(expr, ast.Name) and expr.id not in func.global_names:
                for value in values.get(expr.id, ()):
                    for part in returned_candidates(value):
                        yield node, part


def returned_state(index: ModuleIndex, func: FunctionInfo) -> tuple[ast.Return, str] | None:
    """The first shared state that ``func`` returns, directly or through one local:
    ``return G``, ``return G[device]``, ``return cls._stream``, or ``s = G.get(d); return s``."""
    shared = SharedNames(index, local_bindings(func))
    for node, expr in _returned_exprs(index, func):
        name = state_named(index, func, expr, shared, store=False)
        if name is not None:
            return node, name
    return None


def state_writes(index: ModuleIndex, func: FunctionInfo) -> list[StateWrite]:
    """Every store of ``func`` into shared state."""
    shared = SharedNames(index, local_bindings(func))
    writes: list[StateWrite] = []
    for node in body_nodes(func):
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = state_named(index, func, target, shared, store=True)
                if name:
                    writes.append(StateWrite(name, node, node.value, func))
    return writes


def current_stream_stores(index: ModuleIndex) -> Iterator[StateWrite]:
    """Stores of a ``current_stream()`` value into shared state, from the assignments the index
    kept because their text mentions ``current_stream`` (walking every function of every
    module for them cost more than the rest of the scan)."""
    for stmt, func in index.current_stream_stores:
        assert stmt.value is not None
        if not any(is_current_stream_call(index, p) for p in returned_candidates(stmt.value)):
            continue
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if func is None:
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            yield from (StateWrite(n, stmt, stmt.value, None) for n in names)
            continue
        shared = SharedNames(index, _memo(index, "local_bindings", func, _bindings))
        for target in targets:
            name = state_named(index, func, target, shared, store=True)
            if name is not None:
                yield StateWrite(name, stmt, stmt.value, func)


def _bindings(_index: ModuleIndex, func: FunctionInfo) -> set[str]:
    return local_bindings(func)


def writes_by_state(index: ModuleIndex) -> dict[str, list[StateWrite]]:
    """Every store into shared state in the module, by state: built once per module.

    Asking each accessor to walk every function (as this once did) is quadratic: a 500 KB
    module of accessor-like functions took minutes.
    """
    cached = index.memo.get("writes_by_state")
    if cached is None:
        writes: dict[str, list[StateWrite]] = defaultdict(list)
        for name, values in index.module_assigns.items():
            for value in values:
                if value is not None:
                    writes[name].append(StateWrite(name, value, value, None))
        for func in index.functions:
            for write in state_writes(index, func):
                writes[write.state].append(write)
        cached = index.memo["writes_by_state"] = writes
    return cached  # type: ignore[return-value]


def _stream_names(index: ModuleIndex, func: FunctionInfo) -> set[str]:
    """Local names ``func`` makes the current stream (``with torch.cuda.stream(s)``,
    ``set_stream(s)``) or binds to a stream value: what it stores is a real stream."""
    names: set[str] = set()
    for node in body_nodes(func):
        if (
            isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name)
            and index.api(node.func) in _MAKES_CURRENT
        ):
            names.add(node.args[0].id)
    values = _memo(index, "local_values", func, _local_values)
    names.update(n for n, vs in values.items() if any(mentions_accel_stream(index, v) for v in vs))
    return names


def is_stream_value(index: ModuleIndex, write: StateWrite) -> bool:
    """Does ``write`` store an accelerator stream (not an SSE stream, not a file stream)?"""
    if mentions_accel_stream(index, write.value):
        return True
    if write.func is None or not isinstance(write.value, ast.Name):
        return False
    return write.value.id in _memo(index, "stream_names", write.func, _stream_names)


def stored_parameter_writes(index: ModuleIndex, func: FunctionInfo) -> list[StateWrite]:
    """The shared stores of ``func`` (a replacement ``set_stream``) that keep what it was given.

    A counter of switches or a per-thread record is not a cache every thread reads back: only a
    store whose value mentions one of the function's parameters (the stream) is.
    """
    params = set(parameters(func)) - {"self", "cls"}
    return [
        write
        for write in state_writes(index, func)
        if any(isinstance(n, ast.Name) and n.id in params for n in ast.walk(write.value))
    ]


def process_memo(index: ModuleIndex, func: FunctionInfo) -> ast.expr | None:
    """The decorator that memoises ``func`` for the whole process (``lru_cache``, ``cache``)."""
    for decorator in func.node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if index.resolve(target) in _PROCESS_MEMOS:
            return decorator
    return None


def is_current_stream_call(index: ModuleIndex, expr: ast.AST) -> bool:
    """``torch.cuda.current_stream(...)`` or a peer: the calling thread's stream, right now."""
    return isinstance(expr, ast.Call) and index.api(expr.func) == "current_stream"


def returns_current_stream(index: ModuleIndex, func: FunctionInfo) -> bool:
    """Does ``func`` return what ``current_stream()`` gave it, directly or through a local?

    Only the stream itself counts: a kernel compiled with the stream as a sample argument
    (``return compile(kernel, current_stream())``) is not the stream.
    """
    return any(is_current_stream_call(index, e) for _node, e in _returned_exprs(index, func))
