"""Inline suppression: ``# streamcheck: ignore`` or ``# streamcheck: ignore[SC101, SC104]``.

Only the flagged line is consulted (like ``# noqa``), so a suppression never hides a finding
somewhere else. Entries may be rule ids or rule names. The comment is looked up only on lines
that have a finding, so files without findings cost nothing here.
"""

from __future__ import annotations

import re

_IGNORE_RE = re.compile(r"#\s*streamcheck:\s*ignore(?:\[(?P<rules>[^\]]*)\])?", re.IGNORECASE)


def suppressed_rules(line: str) -> frozenset[str] | None:
    """The rule ids/names a line suppresses; an empty set means "all"; None means none."""
    match = _IGNORE_RE.search(line)
    if match is None:
        return None
    listed = match.group("rules")
    if listed is None:
        return frozenset()
    return frozenset(part.strip().lower() for part in re.split(r"[,\s]+", listed) if part.strip())


def is_suppressed(line: str, rule_id: str, rule_name: str) -> bool:
    rules = suppressed_rules(line)
    if rules is None:
        return False
    return not rules or rule_id.lower() in rules or rule_name.lower() in rules
