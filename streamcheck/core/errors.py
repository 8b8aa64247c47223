"""The exception ``assert`` mode raises, carrying findings rather than formatted text."""

from __future__ import annotations

from streamcheck.core.explain import explain_findings
from streamcheck.core.records import Finding


class StreamHazardError(RuntimeError):
    """A launch was stopped before it reached the GPU because it would race or fail.

    The findings are the data; ``str()`` renders them as plain text for tracebacks.
    """

    def __init__(self, findings: list[Finding]):
        self.findings = list(findings)
        super().__init__(self.findings[0].rule_id if self.findings else "stream hazard")

    @property
    def rule_ids(self) -> list[str]:
        return [f.rule_id for f in self.findings]

    def __str__(self) -> str:
        return "launch stopped before it ran:\n" + explain_findings(self.findings)
