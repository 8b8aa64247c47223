"""Plain-text explanation of findings: the canonical words, shared by every front end."""

from __future__ import annotations

import time

from streamcheck.core.ids import Stack
from streamcheck.core.records import Finding


def format_stack(stack: Stack, indent: str = "    ", limit: int = 8) -> str:
    if not stack:
        return f"{indent}(no stack captured)"
    lines = [f"{indent}{path}:{line} in {func}" for path, line, func in stack[:limit]]
    if len(stack) > limit:
        lines.append(f"{indent}... {len(stack) - limit} more frames")
    return "\n".join(lines)


def explain_finding(finding: Finding, occurrences: int = 1) -> str:
    launch = finding.launch
    seen = f" (seen {occurrences}x)" if occurrences > 1 else ""
    parts = [
        f"[{finding.rule_id}] {finding.title}{seen}",
        f"  {finding.message}",
        f"  fix: {finding.fix}",
        f"  launching {launch.thread.describe()}, innermost first:",
        format_stack(launch.stack),
    ]
    if finding.other_event is not None:
        event = finding.other_event
        # Stream switches are recorded without a clock (it would cost every switch); events
        # that carry one say when.
        when = f" at {time.strftime('%H:%M:%S', time.localtime(event.time))}" if event.time \
            else ""
        parts.append(
            f"  {event.thread.describe()} {event.kind} {event.stream.describe()}{when} "
            f"via {event.via or '?'}:"
        )
        parts.append(format_stack(event.stack))
    if finding.other_thread is not None and finding.other_stack_now:
        parts.append(f"  {finding.other_thread.describe()} is now at:")
        parts.append(format_stack(finding.other_stack_now))
    return "\n".join(parts)


def explain_findings(findings: list[Finding]) -> str:
    return "\n\n".join(explain_finding(f) for f in findings)
