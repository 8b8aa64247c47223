"""The architecture, enforced: every ``import`` in streamcheck/ is read with ``ast``.

* the core (``streamcheck.core``) imports the standard library and itself, nothing else: no
  torch, vLLM, rich, pytest, and no other streamcheck package;
* no import cycles between modules (imports inside functions count; imports under
  ``if TYPE_CHECKING:`` do not, since they never run);
* every package sits in a declared layer and imports only from its own layer or the ones
  below, and packages of one layer never import each other both ways.

A new package or top-level module must be given a layer in :data:`LAYERS`.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "streamcheck"

#: Lowest first. A group is a subpackage or top-level module of streamcheck ("" is the
#: package itself: ``streamcheck/__init__.py``, the public API).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # records, rules, clocks, the auditor, the report as data: the standard library only
    ("core", ("core",)),
    # what a runtime or an engine is: CUDA and the simulator, vLLM's layout, our version
    ("runtimes", ("runtime", "vllm_compat", "version")),
    # the hooks and launch wrappers that feed the auditor, and their compiled fast paths
    ("hooks", ("wrappers", "_speedups", "_declare", "_sites", "_launch_check", "_frames",
               "_handoffs", "_counter", "_native_streams", "_creations", "_current_stream",
               "_fast_lock")),
    # turning the audit on: settings, the installer, the process's report writer, activation
    # at start-up, and the public API
    ("audit", ("settings", "installer", "report_writer", "activation", "")),
    # documents read back (against their JSON schemas) and rendered: audit reports, runs
    ("documents", ("schemas", "documents", "render")),
    # what is built on the audit: the KV connector, the repros and their runner, the doctor,
    # the static scan, the pytest plugin's work
    ("tools", ("connector", "repro", "repros", "doctor", "scan", "pytest_support")),
    # entry points
    ("front ends", ("cli", "__main__", "pytest_plugin", "vllm_plugin", "startup")),
)
LAYER_OF = {group: n for n, (_, groups) in enumerate(LAYERS) for group in groups}


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its ``__init__``; a C
    extension by its source, which imports nothing of ours)."""
    found = {}
    for path in [*ROOT.rglob("*.py"), *ROOT.rglob("*.c")]:
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The nodes under ``if TYPE_CHECKING:`` (never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


@cache
def imported_names(module: str) -> frozenset[str]:
    """The dotted names ``module`` imports anywhere (module level and inside functions): for
    ``from a import b``, ``a.b`` where that is a module of ours, else ``a``."""
    path = modules()[module]
    if path.suffix == ".c":
        return frozenset()
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                full = f"{source}.{alias.name}"
                names.add(full if full in modules() else source)
    return frozenset(names)


def _own_module(name: str) -> str | None:
    """The module of ours that ``name`` lies in (None: not ours)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules():
            return ".".join(parts)
        parts.pop()
    return None


@cache
def graph() -> dict[str, frozenset[str]]:
    """module -> the modules of ours it imports."""
    edges = {}
    for module in modules():
        own = {_own_module(n) for n in imported_names(module) if n.split(".")[0] == "streamcheck"}
        edges[module] = frozenset(m for m in own if m is not None and m != module)
    return edges


def group_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(edges: dict[str, frozenset[str]] | dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(edges.get(succ, ())))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


# ---- the tests ------------------------------------------------------------------------------


def test_the_import_reader_sees_the_imports():
    """Not vacuous: known edges of every kind are found (module level, inside a function,
    ``from package import module``, ``from package import name``)."""
    edges = graph()
    assert len(modules()) > 100 and sum(map(len, edges.values())) > 300
    assert "streamcheck.wrappers.events" in edges["streamcheck.installer"]  # module level
    assert "streamcheck.runtime.cuda" in edges["streamcheck.installer"]  # inside a function
    assert "streamcheck.installer" in edges["streamcheck.pytest_support.audit_handle"]
    assert "streamcheck" in edges["streamcheck.connector.worker_side"]  # the public API
    assert "torch" in imported_names("streamcheck.runtime.sim.tensor")


def test_the_core_imports_only_the_standard_library_and_itself():
    stdlib = sys.stdlib_module_names
    bad = []
    for module in modules():
        if group_of(module) != "core":
            continue
        for name in sorted(imported_names(module)):
            top = name.split(".")[0]
            if top == "streamcheck":
                if not (name == "streamcheck.core" or name.startswith("streamcheck.core.")):
                    bad.append(f"{module} imports {name}")
            elif top not in stdlib:
                bad.append(f"{module} imports {name} (not the standard library)")
    assert bad == [], "\n".join(bad)


def test_no_import_cycles_between_modules():
    found = cycles(graph())
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_package_has_a_layer():
    missing = sorted({group_of(m) for m in modules()} - set(LAYER_OF))
    assert missing == [], f"give these a layer in tests/test_layers.py LAYERS: {missing}"


def test_no_import_goes_up_the_layers():
    upward = []
    between: dict[str, set[str]] = defaultdict(set)
    for module, targets in sorted(graph().items()):
        mine = group_of(module)
        for target in sorted(targets):
            theirs = group_of(target)
            if theirs == mine or mine not in LAYER_OF or theirs not in LAYER_OF:
                continue
            between[mine].add(theirs)
            if LAYER_OF[theirs] > LAYER_OF[mine]:
                upward.append(f"{module} ({LAYERS[LAYER_OF[mine]][0]}) imports {target} "
                              f"({LAYERS[LAYER_OF[theirs]][0]})")
    assert upward == [], "imports going up the layers:\n" + "\n".join(upward)
    mutual = cycles(between)
    assert mutual == [], f"packages importing each other: {mutual}"
