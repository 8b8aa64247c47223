"""The audit's settings: every name, its default, where it may come from, and which source won.

Sources, lowest to highest precedence, as coverage.py reads its configuration:

1. defaults (below);
2. ``[tool.streamcheck]`` in the nearest ``pyproject.toml`` from the working directory up;
3. environment variables (``STREAMCHECK``, ``STREAMCHECK_REPORT_DIR``, ...);
4. arguments (``install(mode=...)``, command-line options).

A bad value is an error that names its source (the variable, or the file and key), because a
value in an exported variable or a forgotten file is the one a user does not think of.
:meth:`AuditSettings.to_env` writes the whole settings into an environment, so a child process
is audited exactly as its parent (mode, report directory, targets, rule selection, strictness).

=====================  ===========================  ========================================
environment            ``[tool.streamcheck]`` key   meaning
=====================  ===========================  ========================================
STREAMCHECK            mode                         off, record, warn, assert
STREAMCHECK_REPORT_DIR report_dir                   each audited process keeps its report here
STREAMCHECK_TARGETS    targets                      extra launch sites (``wrappers.sites``)
STREAMCHECK_SELECT     select                       rule ids to apply (default: all)
STREAMCHECK_STRICT     strict                       refuse to run unaudited when asked to audit
STREAMCHECK_CORE       core                         auto, compiled, python: the hooks' build
=====================  ===========================  ========================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streamcheck.core.modes import ConfigError, Mode, parse_mode
from streamcheck.wrappers.sites import LaunchSite, SiteError, parse_sites
from streamcheck.wrappers.speedups import CORES

ENV_MODE = "STREAMCHECK"
ENV_REPORT_DIR = "STREAMCHECK_REPORT_DIR"
ENV_TARGETS = "STREAMCHECK_TARGETS"
ENV_SELECT = "STREAMCHECK_SELECT"
ENV_STRICT = "STREAMCHECK_STRICT"
ENV_CORE = "STREAMCHECK_CORE"

PYPROJECT_TABLE = "tool.streamcheck"
_KEYS = {"mode": ENV_MODE, "report_dir": ENV_REPORT_DIR, "targets": ENV_TARGETS,
         "select": ENV_SELECT, "strict": ENV_STRICT, "core": ENV_CORE}
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True)
class AuditSettings:
    """Resolved settings; ``sources`` says where each non-default value came from."""

    mode: Mode = Mode.OFF
    report_dir: str | None = None
    targets: tuple[LaunchSite, ...] = ()
    select: frozenset[str] | None = None
    strict: bool = False
    core: str = "auto"  # wrappers.speedups: the compiled hooks where built, or Python
    target_lines: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, *, cwd: Path | None = None,
             pyproject: bool = True, **arguments: Any) -> AuditSettings:
        """Defaults, then pyproject, then ``environ``, then ``arguments`` (non-None ones)."""
        settings = cls()
        if pyproject:
            path = find_pyproject(cwd or Path.cwd())
            if path is not None:
                table = audit_table(read_table(path))
                settings = settings._apply(table, lambda key: f"{path} [{PYPROJECT_TABLE}] {key}")
        environ = os.environ if environ is None else environ
        from_env = {key: environ[var] for key, var in _KEYS.items() if var in environ}
        settings = settings._apply(from_env, lambda key: f"environment variable {_KEYS[key]}")
        given = {k: v for k, v in arguments.items() if v is not None}
        unknown = set(given) - set(_KEYS)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return settings._apply(given, lambda key: f"argument {key}")

    def _apply(self, values: Mapping[str, Any], source_of: Any) -> AuditSettings:
        changes: dict[str, Any] = {}
        sources = dict(self.sources)
        for key, value in values.items():
            source = source_of(key)
            if key not in _KEYS:
                raise ConfigError(f"{source}: unknown key; known: {', '.join(_KEYS)}")
            changes.update(_parse(key, value, source))
            sources[key] = source
        return replace(self, **changes, sources=sources)

    def to_env(self) -> dict[str, str]:
        """The environment variables that give a child process these settings."""
        env = {ENV_MODE: self.mode.value}
        if self.report_dir:
            env[ENV_REPORT_DIR] = self.report_dir
        if self.target_lines:
            env[ENV_TARGETS] = ";".join(self.target_lines)
        if self.select is not None:
            env[ENV_SELECT] = ",".join(sorted(self.select))
        if self.strict:
            env[ENV_STRICT] = "1"
        if self.core != "auto":
            env[ENV_CORE] = self.core
        return env

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "default")


def _parse(key: str, value: Any, source: str) -> dict[str, Any]:
    if key == "mode":
        if not isinstance(value, (str, Mode)):
            raise ConfigError(f"{source}={value!r}: a mode is a string")
        return {"mode": parse_mode(value, source)}
    if key == "report_dir":
        if not isinstance(value, str):
            raise ConfigError(f"{source}={value!r}: a directory path is a string")
        return {"report_dir": value or None}
    if key == "targets":
        lines = _lines(value, source, split=";")
        try:
            return {"targets": parse_sites(list(lines), source), "target_lines": lines}
        except SiteError as exc:
            raise ConfigError(str(exc)) from None
    if key == "select":
        return {"select": _rule_ids(_lines(value, source, split=","), source)}
    if key == "strict":
        return {"strict": _flag(value, source)}
    if key == "core":
        if not isinstance(value, str) or value.strip().lower() not in CORES:
            raise ConfigError(f"{source}={value!r}: expected one of {', '.join(CORES)}")
        return {"core": value.strip().lower()}
    raise AssertionError(key)


def _lines(value: Any, source: str, split: str) -> tuple[str, ...]:
    if isinstance(value, str):
        parts = [p.strip() for chunk in value.split(split) for p in chunk.splitlines()]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        parts = [v.strip() for v in value]
    else:
        raise ConfigError(f"{source}={value!r}: expected a string or a list of strings")
    return tuple(p for p in parts if p)


def _rule_ids(ids: tuple[str, ...], source: str) -> frozenset[str]:
    from streamcheck.core.rules import RULES

    bad = [i for i in ids if i not in RULES]
    if bad:
        raise ConfigError(f"{source}: unknown rule id(s) {', '.join(bad)}; "
                          f"known: {', '.join(RULES)}")
    return frozenset(ids)


def _flag(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{source}={value!r}: use 1/0, true/false, yes/no or on/off")


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` from ``start`` up (the project root's)."""
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


_table_cache: dict[tuple[str, float], dict[str, Any]] = {}


def read_table(path: Path) -> dict[str, Any]:
    """``[tool.streamcheck]`` of ``path`` (empty when absent); a broken file is an error."""
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        return {}
    cached = _table_cache.get(key)
    if cached is not None:
        return cached
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read [{PYPROJECT_TABLE}]: {exc}") from None
    table = data.get("tool", {}).get("streamcheck", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{PYPROJECT_TABLE}] must be a table")
    _table_cache[key] = table
    return table


def audit_table(table: dict[str, Any]) -> dict[str, Any]:
    """The audit's keys: ``[tool.streamcheck.scan]`` belongs to ``streamcheck scan``."""
    return {key: value for key, value in table.items() if key != "scan"}
