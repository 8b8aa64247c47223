"""Which vLLM versions are checked, and the exact dependency versions each one's tree installs.

The pins are committed (``pinned/VERSION.txt``) so every developer and CI install the same bytes;
``READY.json`` records a digest of them, so a tree built from other pins counts as stale. Lines
are PEP 508 requirements of the form ``name==version  # needed by``, read with ``packaging``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from tools.vllm_env.layout import log

SUPPORTED = ("0.9.2", "0.13.0", "0.24.0", "0.33.0")
CI_VERSIONS = ("0.9.2", "0.33.0")

# Upper bounds that a version's own Requires-Dist leaves open but its code needs. Each stays inside
# vLLM's declared range (it only narrows it). 0.9.2 registers its own "aimv2" config, which
# transformers 4.56+ also defines (ValueError at import); 4.53 was current at its release. 0.24
# pins apache-tvm-ffi==0.1.9 but allows xgrammar<1, and xgrammar 0.2.6+ needs tvm-ffi>=0.1.10.
NARROWER: dict[str, dict[str, str]] = {
    "0.9.2": {"transformers": "<4.54"},
    "0.24.0": {"xgrammar": "<0.2.6"},
}


def checked_version(text: str) -> str:
    """A vLLM version as the tool spells it (``packaging``'s normal form, e.g. ``v0.9.2`` ->
    ``0.9.2``): it names directories and the wheel to fetch. Raises ValueError for anything that
    is not a version (so ``../x`` never becomes a path); notes versions outside SUPPORTED."""
    try:
        version = str(Version(text))
    except InvalidVersion:
        raise ValueError(f"not a vLLM version: {text!r}") from None
    if version not in SUPPORTED:
        log(f"note: {version} is not one of the checked versions {', '.join(SUPPORTED)}")
    return version


@dataclass(frozen=True)
class Pin:
    """One pinned dependency and the first probe target that needed it."""

    name: str
    version: str
    needed_by: str = ""

    def line(self) -> str:
        spec = f"{self.name}=={self.version}"
        return f"{spec:<40}# {self.needed_by}" if self.needed_by else spec


def parse_pin(line: str) -> Pin | None:
    """One pin file line as a Pin; None for a blank or comment line.

    The requirement must be exactly ``name==version`` (no extras, markers or ranges): a pin
    says which bytes to install. The version is kept as written, since the digest reads it.
    """
    body, _, comment = line.partition("#")
    if not body.strip():
        return None
    try:
        req = Requirement(body)
    except InvalidRequirement as exc:
        raise ValueError(f"not a requirement: {line!r} ({exc})") from None
    specs = list(req.specifier)
    if req.extras or req.marker or req.url or len(specs) != 1 or specs[0].operator != "==":
        raise ValueError(f"expected name==version, got {line!r}")
    try:
        Version(specs[0].version)
    except InvalidVersion:
        raise ValueError(f"expected an exact version, got {line!r}") from None
    return Pin(req.name, specs[0].version, comment.strip())


def read_pins(path: Path) -> list[Pin]:
    """Every pin of a committed file; comments and blank lines are skipped."""
    pins = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        try:
            pin = parse_pin(raw)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
        if pin is not None:
            pins.append(pin)
    return pins


def write_pins(path: Path, version: str, pins: Sequence[Pin]) -> None:
    """Committed file: CI and every developer install exactly these versions."""
    head = [
        f"# Dependencies of vLLM {version}'s Python modules as streamcheck imports them",
        "# (current_stream, pynccl, KV connector base/factory, v1 scheduler), on CPU torch.",
        "# Every version lies inside the range that vLLM's own METADATA declares.",
        "# The comment names the first import target that needed the package.",
        "# Regenerate: python -m tools.vllm_env prepare VERSION --discover",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(head + [p.line() for p in pins]) + "\n")


def pins_digest(pins: Sequence[Pin]) -> str:
    """Identifies a pin set, so a stale env is noticed when the committed list changes.

    Its input (``canonical-name==version as written``, sorted) must not change: READY.json of
    every prepared tree holds the digest it was built from.
    """
    text = "\n".join(sorted(f"{canonicalize_name(p.name)}=={p.version}" for p in pins))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
