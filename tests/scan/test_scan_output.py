"""Renderers show exactly the result's findings, in JSON, SARIF 2.1.0 and a rich table."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from streamcheck.scan import RULES, ScanResult, scan_paths
from streamcheck.scan.model import ScanError, ScanFinding
from streamcheck.scan.output import render_rich, to_json, to_sarif

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def result() -> ScanResult:
    return scan_paths([FIXTURES / "vllm092_global_cache.py"])


def test_json_round_trips_and_counts(result: ScanResult) -> None:
    data = json.loads(json.dumps(to_json(result)))
    assert data["schema"] == "streamcheck.scan/1" and data["tool"]["name"] == "streamcheck"
    assert data["summary"] == {"findings": 2, "by_rule": {"SC101": 1, "SC102": 1}}
    first = data["findings"][0]
    assert set(first) == {"rule_id", "rule_name", "path", "line", "col", "message", "hint"}
    assert first["rule_id"] == "SC102"
    assert first["line"] == result.findings[0].line


def test_sarif_is_a_2_1_0_log_with_rules_and_locations(result: ScanResult) -> None:
    log = json.loads(json.dumps(to_sarif(result)))
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert [r["id"] for r in driver["rules"]] == list(RULES)
    for res in run["results"]:
        assert driver["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
        region = res["locations"][0]["physicalLocation"]["region"]
        assert region["startLine"] >= 1 and region["startColumn"] >= 1
        assert res["level"] == "warning" and res["message"]["text"]
    assert run["invocations"][0]["executionSuccessful"] is True


def test_sarif_uris_relative_posix_or_file_uri() -> None:
    finding = ScanFinding("SC101", "pkg/mod.py", 3, 1, "m.", "h.", "global-stream-cache")
    absolute = ScanFinding("SC101", "/abs/mod.py", 3, 1, "m.", "h.", "global-stream-cache")
    error = ScanError("pkg/bad.py", "syntax error: x", 2)
    log = to_sarif(ScanResult((finding, absolute), files_scanned=3, errors=(error,)))
    uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in log["runs"][0]["results"]]
    assert uris == ["pkg/mod.py", "file:///abs/mod.py"]
    note = log["runs"][0]["invocations"][0]["toolExecutionNotifications"][0]
    assert note["locations"][0]["physicalLocation"]["region"] == {"startLine": 2}


def test_rich_table_shows_location_rule_message_and_fix(result: ScanResult) -> None:
    console = Console(file=io.StringIO(), width=200, record=True)
    render_rich(result, console, title="scan")
    text = console.export_text()
    sc101 = next(f for f in result.findings if f.rule_id == "SC101")
    assert f"vllm092_global_cache.py:{sc101.line}:1" in text
    assert "SC101" in text and "global-stream-cache" in text and "Fix:" in text
    assert "2 finding(s) in 1 file(s)" in text


def test_rich_reports_errors_and_a_clean_summary() -> None:
    clean = ScanResult((), files_scanned=4, errors=(ScanError("x.py", "syntax error: y", 1),))
    console = Console(file=io.StringIO(), width=200, record=True)
    render_rich(clean, console)
    text = console.export_text()
    assert "could not scan x.py:1: syntax error: y" in text
    assert "0 finding(s) in 4 file(s)" in text
