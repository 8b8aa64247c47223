"""Where the plugin's mode comes from, and what a test's marker asks for.

The mode is read from the command line, then the ini file, then the environment, first set
wins; the error for a bad value names the place it came from, since a value in an ini file or
an exported variable is easy to forget about.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamcheck.core.modes import ConfigError, Mode, parse_mode

CLI_OPTION = "--streamcheck"
INI_OPTION = "streamcheck"
ENV_VAR = "STREAMCHECK_PYTEST"
MARKER = "streamcheck"
NO_AUDIT_MARKER = "no_streamcheck"  # as pytest-cov's no_cover: "skip" read like a pytest skip


@dataclass(frozen=True)
class Settings:
    """The resolved session settings; built once in ``pytest_configure``."""

    mode: Mode
    source: str
    report_path: Path | None = None


def resolve_mode(cli: str | None, ini: str | None, env: str | None,
                 ini_file: str = "-o") -> tuple[Mode, str]:
    """First source that is set wins: CLI, then ini, then environment. Raises ConfigError."""
    candidates = (
        (cli, CLI_OPTION),
        (ini, f"ini option '{INI_OPTION}' ({ini_file})"),
        (env, f"environment variable {ENV_VAR}"),
    )
    for value, source in candidates:
        if value is None or (source != CLI_OPTION and not value.strip()):
            continue
        try:
            return parse_mode(value, source), source
        except ConfigError:
            valid = ", ".join(m.value for m in Mode)
            raise ConfigError(
                f"{value!r} from {source} is not a streamcheck mode; valid modes: {valid}"
            ) from None
    return Mode.OFF, "default"


def split_bare_flag(args: list[str], invocation_dir: Path, default: str = "record") -> bool:
    """Rewrite ``--streamcheck PATH`` to ``--streamcheck=record PATH`` in place.

    ``--streamcheck`` takes an optional value, so argparse reads the word after it as the mode,
    and ``pytest --streamcheck tests/`` would fail on the mode 'tests/'. A following word that
    names an existing file or directory (or node id) and is not a mode is the user's test path.
    Returns whether it changed ``args``.
    """
    changed = False
    for i, arg in enumerate(args[:-1]):
        following = args[i + 1]
        if arg != CLI_OPTION or following.startswith("-") or _is_mode(following):
            continue
        if (invocation_dir / following.split("::")[0]).exists():
            args[i] = f"{CLI_OPTION}={default}"
            changed = True
    return changed


def _is_mode(word: str) -> bool:
    try:
        parse_mode(word, CLI_OPTION)
    except ConfigError:
        return False
    return True


def read_settings(config: pytest.Config) -> Settings:
    """The session's settings; a bad value is a usage error naming its source."""
    ini_file = str(config.inipath) if config.inipath else f"-o {INI_OPTION}=..."
    try:
        mode, source = resolve_mode(config.getoption("streamcheck"),
                                    config.getini(INI_OPTION) or None,
                                    os.environ.get(ENV_VAR), ini_file)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    report = config.getoption("streamcheck_report")
    # Made absolute now, like --junitxml: a test may change the working directory.
    return Settings(mode, source, Path(os.path.abspath(report)) if report else None)


@dataclass(frozen=True)
class ItemPolicy:
    """What ``@pytest.mark.streamcheck(...)`` asks of one test."""

    skip: bool = False
    allow: frozenset[str] = frozenset()


class MarkerError(ValueError):
    """A ``streamcheck`` marker pytest accepted but streamcheck cannot use."""


class StreamcheckDeprecationWarning(DeprecationWarning):
    """A spelling that still works and will be removed; the message names the new one."""


def policy_for(item: pytest.Item) -> ItemPolicy:
    """Read the markers on ``item``: ``no_streamcheck`` anywhere turns the audit off for it;
    ``allow`` lists add up.

    Unknown keywords and rule ids are errors rather than silently ignored: a typo in
    ``allow`` would otherwise let the very hazard through that the test meant to tolerate.
    ``streamcheck(skip=True)``, the old spelling, still works (the closest ``skip`` wins) and
    warns.
    """
    for mark in item.iter_markers(NO_AUDIT_MARKER):
        if mark.args or mark.kwargs:
            raise MarkerError(f"@pytest.mark.{NO_AUDIT_MARKER} takes no arguments")
    no_audit = item.get_closest_marker(NO_AUDIT_MARKER) is not None
    markers = list(item.iter_markers(MARKER))
    skip: bool | None = None
    allow: set[str] = set()
    for mark in markers:
        if mark.args:
            raise MarkerError(f"@pytest.mark.{MARKER} takes keywords only (allow=), "
                              f"got positional {mark.args!r}")
        unknown = set(mark.kwargs) - {"skip", "allow"}
        if unknown:
            raise MarkerError(f"@pytest.mark.{MARKER}: unknown keyword(s) "
                              f"{', '.join(sorted(unknown))}; use allow= (or mark the test "
                              f"{NO_AUDIT_MARKER})")
        if "skip" in mark.kwargs:
            item.warn(StreamcheckDeprecationWarning(
                f"@pytest.mark.{MARKER}(skip=...) is deprecated: use "
                f"@pytest.mark.{NO_AUDIT_MARKER} to leave a test unaudited"))
            if skip is None:
                skip = bool(mark.kwargs["skip"])
        allow |= _rule_ids(mark.kwargs.get("allow", ()))
    return ItemPolicy(no_audit or bool(skip), frozenset(allow))


def _rule_ids(value: Any) -> set[str]:
    from streamcheck.core.rules import RULES

    ids = {value} if isinstance(value, str) else set(value)
    bad = sorted(str(i) for i in ids if i not in RULES)
    if bad:
        raise MarkerError(f"@pytest.mark.{MARKER}(allow=...): unknown rule id(s) "
                          f"{', '.join(bad)}; known: {', '.join(RULES)}")
    return ids
