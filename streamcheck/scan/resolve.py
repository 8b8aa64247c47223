"""Turn what a user typed (a path, or an installed package's name) into source paths.

A package is located with the import system's finders but never imported: importing vLLM
takes seconds, needs a GPU stack, and runs exactly the module-level monkey-patching we want to
look at, not execute. ``importlib.util.find_spec`` imports the *parents* of a dotted name, so
only the top-level name goes through it and sub-packages are looked up with ``PathFinder`` in
the parent's directories. A distribution name (``vllm-ascend``) is mapped to the packages it
installs through its metadata, which is read, not executed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import re
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path

_MODULE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ScanTargetError(ValueError):
    """A target that is neither an existing path nor an installed package with Python source."""


def _find_spec(name: str) -> ModuleSpec | None:
    head, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(head)
    except (ValueError, ImportError):
        spec = importlib.machinery.PathFinder.find_spec(head)
    for part in rest:
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(
            f"{spec.name}.{part}", list(spec.submodule_search_locations)
        )
    return spec


def _spec_paths(name: str, spec: ModuleSpec) -> tuple[Path, ...]:
    if spec.submodule_search_locations:
        return tuple(Path(p) for p in spec.submodule_search_locations)
    origin = spec.origin or ""
    if origin.endswith(".py"):
        return (Path(origin),)
    raise ScanTargetError(
        f"{name!r} is a compiled or built-in module ({origin or 'no file'}): "
        "there is no Python source to scan"
    )


def _distribution_packages(name: str) -> list[str]:
    """Top-level import names installed by distribution ``name`` (``vllm-ascend``)."""
    wanted = re.sub(r"[-_.]+", "-", name).lower()
    found = [
        top
        for top, dists in importlib.metadata.packages_distributions().items()
        if any(re.sub(r"[-_.]+", "-", d).lower() == wanted for d in dists)
        and _MODULE_NAME_RE.match(top)
    ]
    return sorted(found)


def resolve_target(target: str | Path) -> tuple[Path, ...]:
    """The source paths for one target: a path as is, else an installed package's source."""
    path = Path(target)
    if path.exists():
        return (path,)
    name = str(target)
    if _MODULE_NAME_RE.match(name):
        spec = _find_spec(name)
        if spec is not None:
            return _spec_paths(name, spec)
    tops = _distribution_packages(name) if re.match(r"^[A-Za-z0-9][\w.-]*$", name) else []
    paths = [p for top in tops if (spec := _find_spec(top)) for p in _spec_paths(top, spec)]
    if paths:
        return tuple(paths)
    raise ScanTargetError(
        f"{name!r} is neither an existing file or directory nor an installed package "
        "(looked up on sys.path without importing it)"
    )


def resolve_targets(targets: Sequence[str | Path]) -> list[Path]:
    """:func:`resolve_target` for each target, in order; the first bad one raises."""
    return [path for target in targets for path in resolve_target(target)]
