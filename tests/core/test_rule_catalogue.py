"""One hazard catalogue for every front end, documented and reproduced.

Every runtime rule, static scan code and doctor hazard maps to an entry of
:mod:`streamcheck.core.hazards` and reports that entry's fix; every entry has a section in
docs/hazards.md that names its scan codes and doctor ids and quotes its fix; every runtime rule
has at least one built-in repro whose hazard it is (so `streamcheck run` shows it firing on a
real bug).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamcheck.core.hazards import CATALOGUE, for_doctor_id, for_scan_code
from streamcheck.core.rules import RULES
from streamcheck.doctor.hazards import HAZARDS as DOCTOR_HAZARDS
from streamcheck.repro.discover import all_repros, load
from streamcheck.scan.rules import RULES as SCAN_RULES

DOC = Path(__file__).parents[2] / "docs" / "hazards.md"


def _sections() -> dict[str, str]:
    """docs/hazards.md's text under each ``## `slug` — ...`` heading, by slug."""
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.M)
    found = {}
    for part in parts[1:]:
        match = re.match(r"`([a-z-]+)` — ", part)
        if match:
            found[match.group(1)] = part
    return found


def _plain(text: str) -> str:
    return " ".join(text.replace("`", "").split())


def test_every_runtime_rule_is_a_catalogue_entry_and_reports_its_words() -> None:
    assert list(RULES) == list(CATALOGUE)
    for rule_id, rule in RULES.items():
        assert (rule.title, rule.fix) == (CATALOGUE[rule_id].title, CATALOGUE[rule_id].fix)


def test_every_scan_code_maps_to_one_entry_and_hints_its_fix() -> None:
    listed = [code for entry in CATALOGUE.values() for code in entry.scan_codes]
    assert sorted(listed) == sorted(SCAN_RULES)  # each code under exactly one entry
    for code, rule in SCAN_RULES.items():
        assert rule.hint == for_scan_code(code).fix


def test_every_doctor_hazard_maps_to_one_entry_and_gives_its_fix() -> None:
    listed = [hid for entry in CATALOGUE.values() for hid in entry.doctor_ids]
    assert sorted(listed) == sorted(h.id for h in DOCTOR_HAZARDS)
    for hazard in DOCTOR_HAZARDS:
        entry = for_doctor_id(hazard.id)
        assert hazard.rule == entry.slug
        assert hazard.fix.endswith(entry.fix)  # after the remedy without code, if any
        assert hazard.fix == entry.fix or hazard.fix.startswith(hazard.upgrade)


def test_unknown_ids_map_to_no_entry() -> None:
    with pytest.raises(KeyError):
        for_scan_code("SC199")
    with pytest.raises(KeyError):
        for_doctor_id("no-such-probe")


def test_fix_texts_are_not_repeated_across_entries() -> None:
    fixes = [entry.fix for entry in CATALOGUE.values()]
    assert len(set(fixes)) == len(fixes)


def test_every_entry_has_a_section_with_its_anchor_ids_and_fix() -> None:
    text = DOC.read_text(encoding="utf-8")
    sections = _sections()
    assert set(sections) == set(CATALOGUE)
    for slug, entry in CATALOGUE.items():
        assert entry.doc == f"docs/hazards.md#{slug}"
        assert f'<a id="{slug}"></a>\n\n## `{slug}` — ' in text
        section = sections[slug]
        found_by = re.search(r"^- \*\*Found by\.\*\* (.*?)(?=^- \*\*)", section, re.M | re.S)
        assert found_by is not None, slug
        names = " ".join(found_by.group(1).split())
        for code in entry.scan_codes:
            assert f"{code} `{SCAN_RULES[code].name}`" in names, (slug, code)
        for hazard_id in entry.doctor_ids:
            assert f"`{hazard_id}`" in names, (slug, hazard_id)
        named = set(re.findall(r"SC\d{3}", names))
        assert named == set(entry.scan_codes), slug
        fix = re.search(r"^- \*\*Fix\.\*\* (.*?)(?:\n\n|\Z)", section, re.M | re.S)
        assert fix is not None, slug
        assert _plain(fix.group(1)) == _plain(entry.fix), slug


def test_every_rule_has_a_repro_and_every_repro_names_a_rule() -> None:
    hazards = {load(r.path).SPEC.hazard for r in all_repros()}
    assert set(RULES) <= hazards
    assert hazards <= set(RULES)


def test_every_report_a_repro_declares_is_named_in_the_hazards_doc() -> None:
    text = DOC.read_text(encoding="utf-8")
    refs = {report.ref for r in all_repros() for report in load(r.path).SPEC.reports}
    assert len(refs) >= 10
    assert [ref for ref in sorted(refs) if ref not in text] == []
