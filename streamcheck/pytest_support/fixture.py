"""The ``streamcheck_findings`` fixture: the running test's findings, for assertions.

A live view rather than a snapshot, so a test can check after the part that should (or should
not) produce a finding: ``assert streamcheck_findings.rule_ids == ["foreign-stream"]``. Reading
it also picks up the reports of child processes that already exited. Without ``--streamcheck``
(or in a test marked ``no_streamcheck``) it is empty and ``active`` is False, so a test can tell
"clean" from "not audited".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import overload

import pytest

from streamcheck.pytest_support.records import ItemRecord, Observed
from streamcheck.pytest_support.state import STATE


class FindingsView(Sequence[Observed]):
    """Sequence of :class:`~streamcheck.pytest_support.records.Observed`; call it for a list."""

    def __init__(self, record: ItemRecord | None, refresh: Callable[[], None]) -> None:
        self._record = record
        self._refresh = refresh

    @property
    def active(self) -> bool:
        return self._record is not None

    def __call__(self) -> list[Observed]:
        if self._record is None:
            return []
        self._refresh()
        return self._record.observed()

    @property
    def rule_ids(self) -> list[str]:
        return [o.rule_id for o in self()]

    @overload
    def __getitem__(self, index: int) -> Observed: ...
    @overload
    def __getitem__(self, index: slice) -> list[Observed]: ...
    def __getitem__(self, index: int | slice) -> Observed | list[Observed]:
        return self()[index]

    def __len__(self) -> int:
        return len(self())

    def __iter__(self) -> Iterator[Observed]:
        return iter(self())

    def __repr__(self) -> str:
        state = "active" if self.active else "not auditing"
        return f"<streamcheck findings ({state}): {self.rule_ids!r}>"


def findings_view(request: pytest.FixtureRequest) -> FindingsView:
    state = request.config.stash.get(STATE, None)
    if state is None or state.current is None or state.current.nodeid != request.node.nodeid:
        return FindingsView(None, lambda: None)
    record = state.current

    def refresh() -> None:
        if state.current is record:  # a view kept past its test must not read the next one's
            state.collect_children()

    return FindingsView(record, refresh)
