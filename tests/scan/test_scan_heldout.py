"""The scanner on a held-out set: minimized excerpts of released and public code, labelled
inline (``# expect: SC103``) from the rules' definitions without reference to how they are
implemented (``heldout/INDEX.md`` gives each case's source and why it is labelled so).

Each case (one ``cNN_*.py`` file or one ``pkg_*/`` project) is scanned on its own, the way a
user scans one project: several unrelated projects in one scan would see each other's
``vllm/utils.py``. The set is not tuned against: a case the scanner gets wrong stays wrong
here, and the thresholds are the ones the scanner is held to.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamcheck.scan import scan_paths
from tests.scan.test_scan_fixtures import expected_findings

HELDOUT = Path(__file__).parent / "heldout"
CASES = sorted(
    p for p in HELDOUT.iterdir()
    if (p.suffix == ".py" and p.name.startswith("c")) or (p.is_dir() and p.name.startswith("pkg_"))
)


def _labels(case: Path) -> set[tuple[Path, int, str]]:
    files = [case] if case.is_file() else sorted(case.rglob("*.py"))
    return {(f.resolve(), line, rule) for f in files for line, rule in expected_findings(f)}


@pytest.fixture(scope="module")
def outcome() -> tuple[set, set]:
    expected: set[tuple[Path, int, str]] = set()
    reported: set[tuple[Path, int, str]] = set()
    for case in CASES:
        result = scan_paths([case])
        assert result.errors == (), case
        expected |= _labels(case)
        reported |= {(Path(f.path).resolve(), f.line, f.rule_id) for f in result.findings}
    return expected, reported


def test_the_set_has_positives_and_look_alikes_for_every_rule_it_covers() -> None:
    assert len(CASES) >= 40
    positive_cases = [c for c in CASES if _labels(c)]
    assert 15 <= len(positive_cases) <= len(CASES) - 15
    rules = {rule for case in CASES for _f, _l, rule in _labels(case)}
    assert rules == {"SC101", "SC102", "SC103", "SC104", "SC105"}


def test_precision_at_least_095_and_recall_at_least_090(outcome) -> None:
    expected, reported = outcome
    true = expected & reported
    precision = len(true) / len(reported)
    recall = len(true) / len(expected)
    wrong = sorted((p.relative_to(HELDOUT.resolve()), line, rule)
                   for p, line, rule in reported - expected)
    missed = sorted((p.relative_to(HELDOUT.resolve()), line, rule)
                    for p, line, rule in expected - reported)
    assert precision >= 0.95, wrong
    assert recall >= 0.90, missed
