"""Which functions of a module run on a helper thread, and whether a device is set there.

A new Python thread starts with PyTorch's per-thread state reset: current device 0, current
stream the legacy default stream. So what matters is not where a function is defined but which
thread runs it. We follow, inside one module, the callables handed to ``threading.Thread``,
``threading.Timer``, an executor's ``submit``/``map`` or ``run_in_executor``, and ``run()`` of
``threading.Thread`` subclasses, then the calls they make to the module's own functions
(``helper()``, ``self.method()``). A function is *protected* when every known path into it
passed a ``set_device`` call, or a ``with torch.cuda.device(...)`` block, before the call.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

from streamcheck.scan.index import FunctionInfo, ModuleIndex, ThreadSpawn, dotted

_SET_DEVICE_CALLS = frozenset({"set_device", "set_device_index"})
_DEVICE_CONTEXTS = frozenset({"device", "device_of", "accelerator.device_index"})
_THREAD_BASES = frozenset({"threading.Thread"})


@dataclass(frozen=True)
class ThreadReach:
    """A function that runs on a helper thread, and how it got there."""

    func: FunctionInfo
    root: str
    protected: bool


def body_nodes(func: FunctionInfo) -> Iterator[ast.AST]:
    """Every node of ``func``'s body, without the bodies of nested functions and classes."""
    stack: list[ast.AST] = list(reversed(func.node.body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


#: How many calls deep a helper that sets the device is looked for (``self._init_device()``).
_SET_DEVICE_DEPTH = 3


def _is_set_device_call(index: ModuleIndex, node: ast.Call) -> bool:
    return (index.resolve(node.func) or "").rpartition(".")[2] in _SET_DEVICE_CALLS


def sets_device(index: ModuleIndex, func: FunctionInfo, depth: int = _SET_DEVICE_DEPTH) -> bool:
    """Does calling ``func`` set the calling thread's device (itself or through its callees)?

    A ``with torch.cuda.device(...)`` block inside ``func`` does not count: it is undone on
    exit. Memoised per function; a recursive helper counts as not setting it.
    """
    memo = index.memo.setdefault("sets_device", {})
    assert isinstance(memo, dict)
    key = (id(func.node), depth)  # a helper looked at less deep may still set it deeper
    if key in memo:
        return bool(memo[key])
    memo[key] = False  # a cycle back here answers "no"
    found = False
    for node in body_nodes(func):
        if not isinstance(node, ast.Call):
            continue
        if _is_set_device_call(index, node) or (depth > 1 and any(
            sets_device(index, callee, depth - 1)
            for callee in resolve_callable(index, node.func, func, _owner_class(func))
        )):
            found = True
            break
    memo[key] = found
    return found


class DeviceGuard:
    """Answers "has this function set the device before line N?" for one function body.

    A call to one of the module's own functions that sets the device (``self._bind_device()``)
    counts as setting it at the line of the call.
    """

    def __init__(self, index: ModuleIndex, func: FunctionInfo) -> None:
        self.first_set_device: int | None = None
        self.blocks: list[tuple[int, int]] = []
        owner = _owner_class(func)
        for node in body_nodes(func):
            if isinstance(node, ast.Call):
                if _is_set_device_call(index, node) or any(
                    sets_device(index, callee)
                    for callee in resolve_callable(index, node.func, func, owner)
                ):
                    line = node.lineno
                    if self.first_set_device is None or line < self.first_set_device:
                        self.first_set_device = line
            elif isinstance(node, ast.With | ast.AsyncWith):
                for item in node.items:
                    expr = item.context_expr
                    if not isinstance(expr, ast.Call):
                        continue
                    # ``with torch.device(...)`` only sets the factory default, not the
                    # current device that a new stream is created on.
                    name = index.resolve(expr.func)
                    if name != "torch.device" and index.api(expr.func) in _DEVICE_CONTEXTS:
                        self.blocks.append((node.lineno, node.end_lineno or node.lineno))

    def covers(self, node: ast.AST) -> bool:
        line = getattr(node, "lineno", 0)
        if self.first_set_device is not None and self.first_set_device < line:
            return True
        return any(start <= line <= end for start, end in self.blocks)


def _methods(
    index: ModuleIndex, cls: ast.ClassDef, name: str, seen: set[int]
) -> list[FunctionInfo]:
    """``cls.name`` and, failing that, the same method on the module's own base classes."""
    if id(cls) in seen:
        return []
    seen.add(id(cls))
    found = [f for f in index.functions_by_name.get(name, []) if f.cls is cls]
    if found:
        return found
    for base in cls.bases:
        if isinstance(base, ast.Name):
            for base_cls in index.classes.get(base.id, []):
                found.extend(_methods(index, base_cls, name, seen))
    return found


def resolve_callable(
    index: ModuleIndex, expr: ast.expr, scope: FunctionInfo | None, cls: ast.ClassDef | None
) -> list[FunctionInfo]:
    """The module's functions that ``expr`` (a callee or a thread target) may name."""
    if isinstance(expr, ast.Call) and (index.resolve(expr.func) or "").endswith("partial"):
        return resolve_callable(index, expr.args[0], scope, cls) if expr.args else []
    if isinstance(expr, ast.Name):
        candidates = index.functions_by_name.get(expr.id, [])
        nested = [f for f in candidates if scope is not None and f.parent is scope]
        return nested or [f for f in candidates if f.cls is None and f.parent is None]
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        owner = expr.value.id
        if owner in ("self", "cls") and cls is not None:
            return _methods(index, cls, expr.attr, set())
        for named_cls in index.classes.get(owner, []):
            return _methods(index, named_cls, expr.attr, set())
    if isinstance(expr, ast.Attribute):
        # ``worker.run`` / ``self.saver.loop``: a method of the class constructed into the name.
        receiver = dotted(expr.value)
        if receiver is not None:
            return [
                method
                for class_name in sorted(index.classes_bound_to(receiver, cls))
                for named_cls in index.classes.get(class_name, [])
                for method in _methods(index, named_cls, expr.attr, set())
            ]
    return []


def _owner_class(func: FunctionInfo | None) -> ast.ClassDef | None:
    while func is not None:
        if func.cls is not None:
            return func.cls
        func = func.parent
    return None


def _thread_classes(index: ModuleIndex) -> list[ast.ClassDef]:
    """Classes of this module that derive (directly or via the module's classes) from Thread."""
    found: dict[int, ast.ClassDef] = {}
    changed = True
    while changed:
        changed = False
        for defs in index.classes.values():
            for cls in defs:
                if id(cls) in found:
                    continue
                for base in cls.bases:
                    is_thread = index.resolve(base) in _THREAD_BASES
                    is_local_sub = isinstance(base, ast.Name) and any(
                        id(c) in found for c in index.classes.get(base.id, [])
                    )
                    if is_thread or is_local_sub:
                        found[id(cls)] = cls
                        changed = True
                        break
    return list(found.values())


def _spawn_roots(index: ModuleIndex, spawn: ThreadSpawn) -> list[FunctionInfo]:
    if isinstance(spawn.target, ast.Lambda):
        roots: list[FunctionInfo] = []
        for node in ast.walk(spawn.target.body):
            if isinstance(node, ast.Call):
                roots.extend(resolve_callable(index, node.func, spawn.scope, spawn.cls))
        return roots
    return resolve_callable(index, spawn.target, spawn.scope, spawn.cls)


def thread_reach(index: ModuleIndex) -> list[ThreadReach]:
    """Every function of the module that runs on a helper thread, in definition order.

    Computed once per module and memoised on the index: three rules ask.
    """
    cached = index.memo.get("thread_reach")
    if cached is None:
        cached = index.memo["thread_reach"] = _compute_reach(index)
    return cached  # type: ignore[return-value]


def _compute_reach(index: ModuleIndex) -> list[ThreadReach]:
    work: list[tuple[FunctionInfo, str, bool]] = []
    for spawn in index.thread_spawns:
        target = ast.unparse(spawn.target)
        keyword = {"threading.Thread": "target=", "threading.Timer": "function="}
        root = f"{spawn.how}({keyword.get(spawn.how, '')}{target}) at line {spawn.node.lineno}"
        work.extend((func, root, False) for func in _spawn_roots(index, spawn))
    for cls in _thread_classes(index):
        for func in _methods(index, cls, "run", set()):
            work.append((func, f"{cls.name}.run (a threading.Thread subclass)", False))

    reached: dict[int, ThreadReach] = {}
    while work:
        func, root, protected = work.pop()
        old = reached.get(id(func.node))
        if old is not None and (old.protected <= protected):
            continue  # already known, and at least as exposed as this path
        reached[id(func.node)] = ThreadReach(func, root, protected)
        guard = DeviceGuard(index, func)
        for node in body_nodes(func):
            if isinstance(node, ast.Call):
                callees = resolve_callable(index, node.func, func, _owner_class(func))
                callee_protected = protected or guard.covers(node)
                work.extend((callee, root, callee_protected) for callee in callees)
    return sorted(reached.values(), key=lambda r: (r.func.node.lineno, r.func.node.col_offset))
