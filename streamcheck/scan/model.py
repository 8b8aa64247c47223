"""What a static scan produces: findings, the files it could not read, and a summary.

These are plain frozen records so that the analysis (``rules``), the driver (``engine``) and the
reporters (``output``) can be tested apart: reporters only read these, they never look at code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ScanFinding:
    """One hazard at one place in the source.

    ``line`` is 1-based and ``col`` is 1-based too (the way editors, flake8 and SARIF count), so
    ``path:line:col`` can be pasted into an editor as is.
    """

    rule_id: str
    path: str
    line: int
    col: int
    message: str
    hint: str
    rule_name: str = ""

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"

    @property
    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.path, self.line, self.col, self.rule_id)


@dataclass(frozen=True, slots=True)
class ScanError:
    """A file the scan had to skip (unreadable, not valid Python): reported, never fatal."""

    path: str
    message: str
    line: int | None = None

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Everything one scan found, in a stable order (path, line, column, rule)."""

    findings: tuple[ScanFinding, ...]
    files_scanned: int
    errors: tuple[ScanError, ...] = ()
    #: Of ``files_scanned``, those that mention a stream and so had to be parsed; the rest were
    #: cleared by a cheap text check.
    files_parsed: int = 0
    duration_s: float = 0.0
    #: Rule ids that were reported on (after ``select``/``ignore``).
    rules: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.findings

    def by_rule(self) -> dict[str, int]:
        return dict(sorted(Counter(f.rule_id for f in self.findings).items()))
