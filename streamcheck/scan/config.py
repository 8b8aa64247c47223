"""``[tool.streamcheck.scan]``: the project's scan settings, and which paths they leave out.

A project keeps its scan choices next to its code, as with ruff or flake8::

    [tool.streamcheck.scan]
    select = ["SC1"]                       # default: every rule
    ignore = ["SC105"]
    exclude = ["third_party", "build/*"]   # never scanned, even when named on the command line
    per-file-ignores = {"tests/*" = ["SC101"], "bench_*.py" = ["unsynced-kv-save"]}

Patterns are shell globs. One without a ``/`` matches a file's name or any directory on its
path (``third_party`` leaves out everything under any ``third_party/``); one with a ``/`` is
matched against the path relative to the directory of the ``pyproject.toml`` (``*`` crosses
``/``, so ``tests/*`` is the whole tree). Command-line ``--select`` replaces the configured
selection; ``--ignore`` and ``--exclude`` add to it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcheck.scan.rules import UnknownRuleError, rule_ids_for

SECTION = "tool.streamcheck.scan"
KEYS = ("select", "ignore", "exclude", "per-file-ignores")


class ScanConfigError(ValueError):
    """A ``[tool.streamcheck.scan]`` table that cannot be used; the message says where."""


@dataclass(frozen=True)
class ScanConfig:
    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, frozenset[str]], ...] = ()
    root: Path = field(default_factory=Path.cwd)  # patterns with a "/" are relative to it

    def with_arguments(self, select: Sequence[str] | None, ignore: Sequence[str] | None,
                       exclude: Sequence[str] | None) -> ScanConfig:
        """The command line over the file: select replaces, ignore and exclude add."""
        return dataclasses.replace(
            self, select=tuple(select) if select else self.select,
            ignore=(*self.ignore, *(ignore or ())),
            exclude=(*self.exclude, *_split(exclude or ())),
        )

    def excluded(self, path: Path) -> bool:
        return any(_matches(path, pattern, self.root) for pattern in self.exclude)

    def ignored_rules(self, path: str) -> frozenset[str]:
        """Rule ids the per-file ignores switch off for ``path``."""
        ids: set[str] = set()
        for pattern, rules in self.per_file_ignores:
            if _matches(Path(path), pattern, self.root):
                ids |= rules
        return frozenset(ids)


def load_scan_config(table: dict[str, Any], pyproject: Path | None) -> ScanConfig:
    """The settings from the ``scan`` sub-table of ``[tool.streamcheck]`` (may be empty)."""
    root = pyproject.parent if pyproject is not None else Path.cwd()
    where = f"{pyproject} [{SECTION}]" if pyproject is not None else f"[{SECTION}]"
    if not table:
        return ScanConfig(root=root)
    if not isinstance(table, dict):
        raise ScanConfigError(f"{where}: must be a table")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ScanConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                              f"{', '.join(KEYS)}")
    select = _strings(table, "select", where) if "select" in table else None
    ignore = _strings(table, "ignore", where)
    for key, names in (("select", select or ()), ("ignore", ignore)):
        _check_rules(names, f"{where} {key}")
    per_file = table.get("per-file-ignores", {})
    if not isinstance(per_file, dict):
        raise ScanConfigError(f"{where} per-file-ignores: must be a table of pattern = [rules]")
    pairs = []
    for pattern, rules in per_file.items():
        names = _strings({pattern: rules}, pattern, f"{where} per-file-ignores")
        pairs.append((pattern, frozenset(_check_rules(names, f"{where} per-file-ignores "
                                                              f"{pattern!r}"))))
    return ScanConfig(select=select, ignore=ignore, exclude=_strings(table, "exclude", where),
                      per_file_ignores=tuple(pairs), root=root)


def _strings(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ScanConfigError(f"{where} {key}: must be a list of strings, got {value!r}")
    return tuple(value)


def _check_rules(names: Sequence[str], where: str) -> set[str]:
    try:
        return rule_ids_for(names)
    except UnknownRuleError as exc:
        raise ScanConfigError(f"{where}: {exc}") from None


def _split(values: Sequence[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def _matches(path: Path, pattern: str, root: Path) -> bool:
    pattern = pattern.rstrip("/")
    if "/" not in pattern:
        return any(fnmatch.fnmatchcase(part, pattern) for part in path.parts)
    try:
        relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        relative = path.as_posix()
    return fnmatch.fnmatchcase(relative, pattern) or fnmatch.fnmatchcase(relative,
                                                                         pattern + "/*")
