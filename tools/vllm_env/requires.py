"""What a distribution declares it needs, evaluated for the machine the tree is built for.

Requires-Dist lines, their environment markers and version specifiers are read with
``packaging`` (PEP 508 / PEP 440), with the *target's* marker variables (Linux x86_64 at a given
Python) instead of this interpreter's. Nothing here is evaluated as code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from email.parser import HeaderParser
from pathlib import Path

from packaging.markers import InvalidMarker, Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


def target_marker_env(python: str = "", machine: str = "x86_64") -> dict[str, str]:
    """Marker variables for Linux x86_64 at the given (or this) Python."""
    py = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    return {
        "python_version": py,
        "python_full_version": py + ".0",
        "platform_machine": machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }


def _holds(marker: Marker | None, env: dict[str, str]) -> bool:
    """A marker on the target, with no extra requested; one that cannot be evaluated does not
    hold (a requirement we cannot place is not installed)."""
    if marker is None:
        return True
    try:
        return bool(marker.evaluate({**env, "extra": ""}))
    except (UndefinedComparison, UndefinedEnvironmentName):
        return False


def marker_holds(marker: str, env: dict[str, str]) -> bool:
    """Evaluate a PEP 508 marker string for the target (empty: holds; unreadable: does not)."""
    if not marker.strip():
        return True
    try:
        return _holds(Marker(marker), env)
    except InvalidMarker:
        return False


def requirements(lines: Iterable[str], env: dict[str, str]) -> list[Requirement]:
    """The PEP 508 requirements among ``lines`` whose marker holds on the target.

    A line that is not a requirement is skipped: metadata written by old tools can hold one, and
    it cannot name anything to install.
    """
    out = []
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if _holds(req.marker, env):
            out.append(req)
    return out


def requires_dist(metadata_text: str) -> list[str]:
    """The Requires-Dist values of a METADATA file (RFC 822 headers, read as such)."""
    return HeaderParser().parsestr(metadata_text).get_all("Requires-Dist") or []


def parse_requires(metadata_text: str, env: dict[str, str]) -> dict[str, SpecifierSet]:
    """Canonical name -> every specifier that METADATA places on it where the marker holds
    (several lines for one name are intersected)."""
    out: dict[str, SpecifierSet] = {}
    for req in requirements(requires_dist(metadata_text), env):
        key = canonicalize_name(req.name)
        out[key] = out.get(key, SpecifierSet()) & req.specifier
    return out


def satisfies(version: str, spec: str | SpecifierSet) -> bool:
    """Does ``version`` meet a specifier (``packaging``'s rules; pre-releases count; an empty one
    is met; one that cannot be read, or a version that cannot, is not)?"""
    try:
        specifier = spec if isinstance(spec, SpecifierSet) else SpecifierSet(spec)
        return specifier.contains(Version(version), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return False


def dist_metadata_texts(dirs: Iterable[Path]) -> list[str]:
    """METADATA of every distribution installed under ``dirs`` (site/ and deps/)."""
    texts = []
    for d in dirs:
        texts.extend(p.read_text(errors="replace") for p in d.glob("*.dist-info/METADATA"))
    return texts
