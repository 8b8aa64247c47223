"""Find repro modules: the built-in ``streamcheck.repros`` package, plus directories users add.

The built-in ones live inside the ``streamcheck`` namespace, so a user's own ``repros/``
directory on ``sys.path`` never hides or replaces them.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from streamcheck.repro.spec import ReproSpec

ENV_PATH = "STREAMCHECK_REPRO_PATH"


class ReproError(ValueError):
    """A repro that cannot be found or loaded; the message says which and why."""


@dataclass(frozen=True)
class ReproFile:
    name: str
    path: Path


def builtin_dir() -> Path:
    """Where the built-in repros live: next to this package, found without importing them."""
    return Path(__file__).resolve().parent.parent / "repros"


def search_dirs(extra: list[str] | None = None) -> list[Path]:
    dirs = [Path(d) for d in (extra or [])]
    env = os.environ.get(ENV_PATH, "")
    dirs += [Path(d) for d in env.split(os.pathsep) if d]
    for d in dirs:
        if not d.is_dir():
            raise ReproError(f"repro directory {d} does not exist")
    return [builtin_dir(), *dirs]


def all_repros(extra: list[str] | None = None) -> list[ReproFile]:
    found: dict[str, ReproFile] = {}
    for directory in search_dirs(extra):
        for path in sorted(directory.glob("repro_*.py")):
            found.setdefault(path.stem, ReproFile(path.stem, path))
    return sorted(found.values(), key=lambda r: r.name)


def select(patterns: list[str], extra: list[str] | None = None) -> list[ReproFile]:
    """Repros matching any shell-style pattern; an unmatched pattern is an error naming all."""
    known = all_repros(extra)
    chosen: dict[str, ReproFile] = {}
    for pattern in patterns:
        hits = [r for r in known if fnmatch.fnmatchcase(r.name, pattern)]
        if not hits:
            names = ", ".join(r.name for r in known) or "(none)"
            raise ReproError(f"no repro matches {pattern!r}; known repros: {names}")
        for r in hits:
            chosen.setdefault(r.name, r)
    return list(chosen.values())


def load(path: str | Path) -> ModuleType:
    """Import a repro file by path and check it declares SPEC and run_rank."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"streamcheck_repro_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ReproError(f"cannot import repro {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ReproError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:  # the repro's own top-level code failed
        raise ReproError(f"cannot load repro {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(getattr(module, "SPEC", None), ReproSpec) or not callable(
        getattr(module, "run_rank", None)
    ):
        raise ReproError(f"{path} must define SPEC = ReproSpec(...) and run_rank(ctx)")
    return module
