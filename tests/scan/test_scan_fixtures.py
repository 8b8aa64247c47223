"""Every fixture file states its expected findings inline (``# expect: SC101``), like bugbear.

Unmarked lines are the negative cases: a finding there is a false positive. The fixtures are
scanned together, as one code base, because SC104 depends on other files of the package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamcheck.scan import RULES, ScanResult, scan_paths

FIXTURES = Path(__file__).parent / "fixtures"
_EXPECT_RE = re.compile(r"#\s*expect:\s*(?P<rules>SC\d+(?:\s*,\s*SC\d+)*)")
FIXTURE_FILES = sorted(FIXTURES.rglob("*.py"))


def expected_findings(path: Path) -> set[tuple[int, str]]:
    found: set[tuple[int, str]] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = _EXPECT_RE.search(line)
        if match:
            found.update((number, rule.strip()) for rule in match.group("rules").split(","))
    return found


def actual_findings(result: ScanResult, path: Path) -> set[tuple[int, str]]:
    return {(f.line, f.rule_id) for f in result.findings if Path(f.path) == path}


@pytest.fixture(scope="module")
def fixture_scan() -> ScanResult:
    return scan_paths([FIXTURES])


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_fixture_findings_match_inline_expectations(fixture_scan: ScanResult, path: Path) -> None:
    assert actual_findings(fixture_scan, path) == expected_findings(path)


def test_fixture_scan_has_no_errors(fixture_scan: ScanResult) -> None:
    assert fixture_scan.errors == ()
    assert fixture_scan.files_scanned == len(FIXTURE_FILES)


def test_precision_and_recall_over_all_fixtures(fixture_scan: ScanResult) -> None:
    expected = {(path, *e) for path in FIXTURE_FILES for e in expected_findings(path)}
    actual = {(Path(f.path), f.line, f.rule_id) for f in fixture_scan.findings}
    true_positives = len(expected & actual)
    precision = true_positives / len(actual)
    recall = true_positives / len(expected)
    assert precision >= 0.95, sorted(actual - expected)
    assert recall == 1.0, sorted(expected - actual)


def test_every_rule_has_positive_fixtures() -> None:
    covered = {rule for path in FIXTURE_FILES for _line, rule in expected_findings(path)}
    assert covered == set(RULES)


def test_vllm_092_cache_is_flagged_and_033_thread_local_is_not(fixture_scan: ScanResult) -> None:
    old = actual_findings(fixture_scan, FIXTURES / "vllm092_global_cache.py")
    new = actual_findings(fixture_scan, FIXTURES / "vllm033_thread_local.py")
    assert {rule for _line, rule in old} == {"SC101", "SC102"}
    assert new == set()


def test_findings_carry_name_message_and_hint(fixture_scan: ScanResult) -> None:
    for finding in fixture_scan.findings:
        rule = RULES[finding.rule_id]
        assert finding.rule_name == rule.name
        assert finding.hint == rule.hint
        assert finding.message.endswith(".")
        assert finding.line >= 1 and finding.col >= 1
