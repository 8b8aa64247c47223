"""One statement-level walk over a module that records the facts every rule asks about.

Rules stay small because they never re-walk the whole module: they read this index (imports,
module-level names, functions, classes, ``*.set_stream`` patches, thread start sites) and walk
only the few function bodies they care about. Names are resolved through the module's imports,
so ``from torch.cuda import Stream as S; S()`` is seen as ``torch.cuda.Stream``, and through the
names bound to a device module (``dm = torch.get_device_module(d); dm.Stream()``), so a stream
API reached that way is seen as the CUDA-style API it is.
"""

from __future__ import annotations

import ast
import functools
import re
from collections import defaultdict
from dataclasses import dataclass, field

#: ``torch.<name>`` sub-modules that expose the CUDA-style stream API.
ACCEL_MODULES = frozenset({"cuda", "npu", "xpu", "mlu", "musa", "hpu", "mps", "mtia"})
#: ``torch.accelerator`` members that do what the device modules' members of the same name do.
#: Not ``set_stream``: it switches in C++ without calling ``torch.cuda.set_stream``, so it
#: never rewrites a patched setter's cache (it leaves it stale instead).
_ACCELERATOR_SAME_AS_DEVICE = frozenset({"current_stream"})
#: The name vLLM and SGLang give a device module passed around (``self.device_module``).
DEVICE_MODULE_NAME = "device_module"
#: Calls that return a device module (``torch.cuda`` or its peer) chosen at run time.
DEVICE_MODULE_GETTERS = frozenset({"torch.get_device_module"})

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute accesses on a plain name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def accel_api(qualname: str | None) -> str | None:
    """The member name if ``qualname`` is part of torch's accelerator stream API.

    ``torch.cuda.Stream`` → ``Stream``, ``torch.Stream`` → ``Stream``, ``torch_npu.npu.stream``
    → ``stream``, ``torch.accelerator.set_device_index`` → ``accelerator.set_device_index``.
    Anything else (another library's ``Stream``) is None: an SSE "stream" is not a CUDA stream.
    """
    if not qualname:
        return None
    parts = qualname.split(".")
    if parts[0] == "torch_npu" and len(parts) == 3 and parts[1] == "npu":
        return parts[2]
    if parts[0] != "torch":
        return None
    if len(parts) == 2:
        return parts[1]
    if len(parts) == 3 and parts[1] in ACCEL_MODULES:
        return parts[2]
    if len(parts) == 3 and parts[1] == "accelerator":
        return parts[2] if parts[2] in _ACCELERATOR_SAME_AS_DEVICE else f"accelerator.{parts[2]}"
    if len(parts) == 4 and parts[1] in ACCEL_MODULES and parts[2] == "streams":
        return parts[3]
    return None


@dataclass(eq=False)
class FunctionInfo:
    """A function or method definition and where it sits."""

    node: FunctionNode
    cls: ast.ClassDef | None
    parent: FunctionInfo | None
    global_names: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def qualname(self) -> str:
        return f"{self.cls.name}.{self.name}" if self.cls else self.name


@dataclass(frozen=True)
class SetStreamPatch:
    """``<something>.set_stream = <value>`` (or ``setattr(..., "set_stream", value)``)."""

    node: ast.AST
    target: str
    value: ast.expr
    scope: FunctionInfo | None


@dataclass(frozen=True)
class ThreadSpawn:
    """A place that hands a callable to another thread (``Thread(target=...)``, ``submit``)."""

    node: ast.Call
    how: str
    target: ast.expr
    scope: FunctionInfo | None
    cls: ast.ClassDef | None


@dataclass(eq=False)
class ModuleIndex:
    path: str
    tree: ast.Module
    aliases: dict[str, str] = field(default_factory=dict)
    #: Names bound by a plain assignment at module level, with the assigned values.
    module_assigns: dict[str, list[ast.expr | None]] = field(
        default_factory=lambda: defaultdict(list)
    )
    functions: list[FunctionInfo] = field(default_factory=list)
    functions_by_name: dict[str, list[FunctionInfo]] = field(
        default_factory=lambda: defaultdict(list)
    )
    classes: dict[str, list[ast.ClassDef]] = field(default_factory=lambda: defaultdict(list))
    set_stream_patches: list[SetStreamPatch] = field(default_factory=list)
    thread_spawns: list[ThreadSpawn] = field(default_factory=list)
    #: Dotted names (``dm``, ``self.device_module``) bound anywhere in the module to a device
    #: module: ``torch.get_device_module(...)``, ``getattr(torch, kind)`` or ``torch.cuda``.
    device_modules: set[str] = field(default_factory=set)
    #: Assignments outside class bodies whose text mentions ``current_stream`` (all of them when
    #: no source was given): the only places SC101 looks for a current stream being stored.
    current_stream_stores: list[tuple[ast.Assign | ast.AnnAssign, FunctionInfo | None]] = field(
        default_factory=list
    )
    #: (owner class name or "", dotted name) -> names of the module's classes constructed into
    #: it: ``worker = Worker()`` at any level, ``self.saver = Saver()`` in a method of ``owner``.
    instances: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    #: Derived facts computed once and shared by several rules (e.g. thread reachability).
    memo: dict[str, object] = field(default_factory=dict)

    def resolve(self, node: ast.AST) -> str | None:
        """The dotted name of ``node`` with its first part expanded through the imports."""
        name = dotted(node)
        if name is None:
            return None
        head, _, rest = name.partition(".")
        full = self.aliases.get(head, head)
        return f"{full}.{rest}" if rest else full

    def api(self, node: ast.AST) -> str | None:
        """:func:`accel_api` of what ``node`` names (a callee, a with-item, an annotation).

        A member of a device module reached indirectly (``torch.get_device_module().Stream``,
        ``dm.stream`` with ``dm`` bound to one) is the CUDA-style member of the same name.
        """
        found = accel_api(self.resolve(node))
        if found is None and isinstance(node, ast.Attribute):
            base = node.value
            name = dotted(base)
            if (
                self.is_device_module(base)
                or name in self.device_modules
                or (name is not None and name.rpartition(".")[2] == DEVICE_MODULE_NAME)
            ):
                return accel_api(f"torch.cuda.{node.attr}")
        return found

    def classes_bound_to(self, name: str, owner: ast.ClassDef | None) -> set[str]:
        """The module's classes constructed into ``name`` (``worker``, or ``self.saver`` in a
        method of ``owner``)."""
        return self.instances.get(_instance_key(name, owner), set())

    def is_device_module(self, expr: ast.AST) -> bool:
        """Is ``expr`` itself a device module: ``torch.get_device_module(d)``,
        ``getattr(torch, kind)``, ``torch.cuda``?"""
        if isinstance(expr, ast.Call):
            callee = self.resolve(expr.func)
            if callee in DEVICE_MODULE_GETTERS:
                return True
            return callee == "getattr" and bool(expr.args) and self.resolve(expr.args[0]) == "torch"
        name = self.resolve(expr)
        return bool(name) and name.startswith("torch.") and name[6:] in ACCEL_MODULES

    # Read by every function's analysis: computed once (the index is complete before any rule
    # runs), or a module of many functions costs the square of its size.
    @functools.cached_property
    def module_names(self) -> set[str]:
        return set(self.module_assigns)

    @functools.cached_property
    def thread_local_names(self) -> set[str]:
        """Module names bound to a ``threading.local()`` (or a subclass of it): per thread."""
        local_classes = {
            name
            for name, defs in self.classes.items()
            for cls in defs
            if any(self.resolve(b) == "threading.local" for b in cls.bases)
        }
        found: set[str] = set()
        for name, values in self.module_assigns.items():
            for value in values:
                if isinstance(value, ast.Call):
                    callee = self.resolve(value.func)
                    if callee == "threading.local" or callee in local_classes:
                        found.add(name)
        return found


#: Words without which a line cannot start a thread or patch ``set_stream`` through
#: ``setattr``; expressions are only walked on lines that contain one (or an import alias).
_HOT_WORDS = ("Thread", "Timer", "submit", "map", "run_in_executor", "setattr")
_EXECUTOR_CLASSES = frozenset({"concurrent.futures.ThreadPoolExecutor"})
_BLOCK_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")
_HEADER_FIELDS = ("test", "iter", "items", "subject")


def _hot_lines(source: bytes, words: set[str]) -> set[int]:
    """1-based numbers of the lines of ``source`` that contain any of ``words``."""
    pattern = re.compile("|".join(re.escape(w) for w in sorted(words)).encode())
    lines: set[int] = set()
    line, pos = 1, 0
    for match in pattern.finditer(source):
        line += source.count(b"\n", pos, match.start())
        pos = match.start()
        lines.add(line)
    return lines


class _Indexer:
    """Fills a :class:`ModuleIndex` walking statements only.

    Most of a module's nodes are expressions, and walking them all in Python costs more than
    parsing. Statement-level facts (imports, definitions, ``global``, assignments) need no
    expression walk; calls that start threads or ``setattr`` a ``set_stream`` are looked for
    only in statements whose lines contain a word such a call must contain.
    """

    def __init__(
        self, index: ModuleIndex, hot: set[int] | None, stream_lines: set[int] | None
    ) -> None:
        self.index = index
        self.hot = hot
        self.stream_lines = stream_lines
        self.in_main_guard = False  # inside ``if __name__ == "__main__":``: a script's locals
        self.method_calls: list[tuple[ast.Call, FunctionInfo | None, ast.ClassDef | None]] = []
        self.executor_names: set[str] = set()

    def _is_hot(self, first: int, last: int | None) -> bool:
        if self.hot is None:
            return True
        return any(n in self.hot for n in range(first, (last or first) + 1))

    # statements ------------------------------------------------------------------------------
    def walk(
        self, stmts: list[ast.stmt], func: FunctionInfo | None, cls: ast.ClassDef | None
    ) -> None:
        for stmt in stmts:
            kind = type(stmt)
            if kind is ast.FunctionDef or kind is ast.AsyncFunctionDef:
                self._function(stmt, func, cls)  # type: ignore[arg-type]
            elif kind is ast.ClassDef:
                self.index.classes[stmt.name].append(stmt)  # type: ignore[attr-defined]
                self.walk(stmt.body, func, stmt)  # type: ignore[arg-type]
            elif kind is ast.Import:
                self._import(stmt)  # type: ignore[arg-type]
            elif kind is ast.ImportFrom:
                self._import_from(stmt)  # type: ignore[arg-type]
            elif kind is ast.Global:
                if func is not None:
                    func.global_names.update(stmt.names)  # type: ignore[attr-defined]
            else:
                self._other(stmt, func, cls)

    def _other(self, stmt: ast.stmt, func: FunctionInfo | None, cls: ast.ClassDef | None) -> None:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                self._record_target(stmt, target, stmt.value, func, cls)
        elif isinstance(stmt, ast.AnnAssign):
            self._record_target(stmt, stmt.target, stmt.value, func, cls)
        if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None and (
            self.stream_lines is None
            or any(n in self.stream_lines for n in range(stmt.lineno, (stmt.end_lineno or 0) + 1))
        ) and cls is None and not (func is None and self.in_main_guard):
            self.index.current_stream_stores.append((stmt, func))
        if func is None and cls is None and _is_main_guard(stmt):
            self.in_main_guard = True
            try:
                self.walk(stmt.body, func, cls)  # type: ignore[attr-defined]
                self.walk(stmt.orelse, func, cls)  # type: ignore[attr-defined]
            finally:
                self.in_main_guard = False
            return
        blocks = [getattr(stmt, name, None) for name in _BLOCK_FIELDS]
        if not any(blocks):
            if self._is_hot(stmt.lineno, stmt.end_lineno):
                self._calls(stmt, func, cls)
            return
        header = [getattr(stmt, name, None) for name in _HEADER_FIELDS]
        body_start = min((_first_line(b[0]) for b in blocks if b), default=stmt.lineno)
        if self._is_hot(stmt.lineno, body_start):
            for part in header:
                for node in part if isinstance(part, list) else [part]:
                    if node is not None:
                        self._calls(node, func, cls)
        for block in blocks:
            for child in block or ():
                if isinstance(child, ast.ExceptHandler | ast.match_case):
                    self.walk(child.body, func, cls)
                else:
                    self.walk([child], func, cls)

    def _function(
        self, node: FunctionNode, func: FunctionInfo | None, cls: ast.ClassDef | None
    ) -> None:
        info = FunctionInfo(node=node, cls=cls, parent=func)
        self.index.functions.append(info)
        self.index.functions_by_name[node.name].append(info)
        self.walk(node.body, info, None)

    # imports ---------------------------------------------------------------------------------
    def _import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.partition(".")[0]
            if alias.asname:
                self.index.aliases[alias.asname] = alias.name
            else:
                self.index.aliases.setdefault(root, root)

    def _import_from(self, node: ast.ImportFrom) -> None:
        base = "." * node.level + (node.module or "")
        for alias in node.names:
            if alias.name == "*":
                continue
            sep = "." if base and not base.endswith(".") else ""
            self.index.aliases[alias.asname or alias.name] = f"{base}{sep}{alias.name}"

    # assignments -----------------------------------------------------------------------------
    def _record_target(
        self,
        node: ast.AST,
        target: ast.expr,
        value: ast.expr | None,
        func: FunctionInfo | None,
        cls: ast.ClassDef | None,
    ) -> None:
        if isinstance(target, ast.Name) and func is None and cls is None:
            self.index.module_assigns[target.id].append(value)
        elif (name := globals_key(target)) is not None:
            self.index.module_assigns[name].append(value)  # globals()["name"] = value
        elif isinstance(target, ast.Tuple | ast.List):
            for elt in target.elts:
                self._record_target(node, elt, None, func, cls)
        elif isinstance(target, ast.Attribute) and target.attr == "set_stream" and value:
            name = self.index.resolve(target) or f"<expr>.{target.attr}"
            self.index.set_stream_patches.append(SetStreamPatch(node, name, value, func))
        if value is not None and (name := dotted(target)) is not None:
            self._record_binding(name, value, func, cls)
        if isinstance(value, ast.Call) and self.index.resolve(value.func) in _EXECUTOR_CLASSES:
            last = dotted(target)
            if last:
                self.executor_names.add(last.rpartition(".")[2])

    def _record_binding(
        self, name: str, value: ast.expr, func: FunctionInfo | None, cls: ast.ClassDef | None
    ) -> None:
        """Remember names bound to a device module or to an instance of a class."""
        if self.index.is_device_module(value):
            self.index.device_modules.add(name)
        elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            key = _instance_key(name, _owner_class(func, cls))
            self.index.instances[key].add(value.func.id)

    # calls -----------------------------------------------------------------------------------
    def _calls(self, root: ast.AST, func: FunctionInfo | None, cls: ast.ClassDef | None) -> None:
        owner = _owner_class(func, cls)
        for node in ast.walk(root):
            if isinstance(node, ast.withitem):
                self._executor_with(node)
            if not isinstance(node, ast.Call):
                continue
            self._record_setattr_patch(node, func)
            callee = self.index.resolve(node.func)
            if callee in ("threading.Thread", "threading.Timer"):
                target = self._thread_target(node, callee)
                if target is not None:
                    self.index.thread_spawns.append(ThreadSpawn(node, callee, target, func, owner))
            elif isinstance(node.func, ast.Attribute) and node.args:
                self.method_calls.append((node, func, owner))

    def _executor_with(self, item: ast.withitem) -> None:
        expr = item.context_expr
        if isinstance(expr, ast.Call) and self.index.resolve(expr.func) in _EXECUTOR_CLASSES:
            name = dotted(item.optional_vars) if item.optional_vars is not None else None
            if name:
                self.executor_names.add(name.rpartition(".")[2])

    def _record_setattr_patch(self, node: ast.Call, func: FunctionInfo | None) -> None:
        if not (isinstance(node.func, ast.Name) and node.func.id == "setattr"):
            return
        if len(node.args) != 3:
            return
        obj, attr, value = node.args
        if isinstance(attr, ast.Constant) and attr.value == "set_stream":
            name = f"{self.index.resolve(obj) or '<expr>'}.set_stream"
            self.index.set_stream_patches.append(SetStreamPatch(node, name, value, func))

    @staticmethod
    def _thread_target(node: ast.Call, callee: str) -> ast.expr | None:
        keyword = "target" if callee == "threading.Thread" else "function"
        for kw in node.keywords:
            if kw.arg == keyword:
                return kw.value
        return node.args[1] if len(node.args) >= 2 else None

    def finish(self) -> None:
        """Classify ``x.submit(f)``-style calls once every executor binding is known."""
        for node, func, owner in self.method_calls:
            assert isinstance(node.func, ast.Attribute)
            method = node.func.attr
            receiver = (dotted(node.func.value) or "").rpartition(".")[2]
            lowered = receiver.lower()
            is_executor = (
                receiver in self.executor_names or "executor" in lowered or "thread" in lowered
            )
            if method in ("submit", "map") and is_executor:
                how = f"{receiver}.{method}"
                self.index.thread_spawns.append(ThreadSpawn(node, how, node.args[0], func, owner))
            elif method == "run_in_executor" and len(node.args) >= 2:
                self.index.thread_spawns.append(
                    ThreadSpawn(node, "run_in_executor", node.args[1], func, owner)
                )


def _instance_key(name: str, owner: ast.ClassDef | None) -> tuple[str, str]:
    """``self.x`` belongs to its class; any other name to the module."""
    return (owner.name if owner is not None and name.startswith("self.") else "", name)


def _is_main_guard(stmt: ast.stmt) -> bool:
    """``if __name__ == "__main__":``"""
    if not isinstance(stmt, ast.If) or not isinstance(stmt.test, ast.Compare):
        return False
    test = stmt.test
    names = [test.left, *test.comparators]
    return (
        len(names) == 2 and isinstance(test.ops[0], ast.Eq)
        and any(isinstance(n, ast.Name) and n.id == "__name__" for n in names)
        and any(isinstance(n, ast.Constant) and n.value == "__main__" for n in names)
    )


def globals_key(node: ast.AST) -> str | None:
    """``name`` for ``globals()["name"]``: a module global named through the globals dict."""
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "globals"
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    ):
        return node.slice.value
    return None


def _first_line(node: ast.AST) -> int:
    if isinstance(node, ast.match_case):
        return node.pattern.lineno
    return getattr(node, "lineno", 1)


def _owner_class(func: FunctionInfo | None, cls: ast.ClassDef | None) -> ast.ClassDef | None:
    while func is not None:
        if func.cls is not None:
            return func.cls
        func = func.parent
    return cls


def build_index(tree: ast.Module, path: str, source: bytes | None = None) -> ModuleIndex:
    """Index ``tree`` (parsed from ``path``).

    With ``source`` (the bytes it was parsed from), expressions are walked only on lines that
    can matter; without it, every statement's expressions are walked.
    """
    index = ModuleIndex(path=path, tree=tree)
    hot: set[int] | None = None
    stream_lines: set[int] | None = None
    # Line numbers are counted on b"\n"; a file with old Mac b"\r" line ends is walked whole.
    if source is not None and source.count(b"\r") == source.count(b"\r\n"):
        words = set(_HOT_WORDS)
        words.update(_import_aliases(tree))
        hot = _hot_lines(source, words)
        stream_lines = _hot_lines(source, {"current_stream"})
    indexer = _Indexer(index, hot, stream_lines)
    indexer.walk(tree.body, None, None)
    indexer.finish()
    return index


def _import_aliases(tree: ast.Module) -> set[str]:
    """Local names bound to threading's and concurrent.futures' thread starters by ``as``."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module in ("threading", "concurrent.futures"):
            names.update(a.asname for a in node.names if a.asname)
        elif isinstance(node, ast.Import):
            names.update(a.asname for a in node.names if a.asname and a.name == "threading")
    return names
