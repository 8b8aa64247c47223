"""Every runtime rule is documented and reproduced: a section in docs/hazards.md and at least
one built-in repro whose hazard it is (so `streamcheck run` shows it firing on a real bug)."""

from __future__ import annotations

from pathlib import Path

from streamcheck.core.rules import RULES
from streamcheck.repro.discover import all_repros, load

DOC = Path(__file__).parents[2] / "docs" / "hazards.md"


def test_every_rule_has_a_section_in_the_hazards_doc() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [rule for rule in RULES if f"## `{rule}`" not in text]
    assert missing == []


def test_every_rule_has_a_repro_and_every_repro_names_a_rule() -> None:
    hazards = {load(r.path).SPEC.hazard for r in all_repros()}
    assert set(RULES) <= hazards
    assert hazards <= set(RULES)


def test_every_report_a_repro_declares_is_named_in_the_hazards_doc() -> None:
    text = DOC.read_text(encoding="utf-8")
    refs = {report.ref for r in all_repros() for report in load(r.path).SPEC.reports}
    assert len(refs) >= 10
    assert [ref for ref in sorted(refs) if ref not in text] == []
