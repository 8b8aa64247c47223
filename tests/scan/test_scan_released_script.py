"""The released-code report script, without the network: verdicts, expectations, the doc."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from streamcheck.scan import ScanResult
from streamcheck.scan.model import ScanFinding

SCRIPT = Path(__file__).parents[2] / "scripts" / "scan_released.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("scan_released", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _outcome(script, key: str, findings: list[tuple[str, int, str]]):
    root = Path("/tmp/x")
    target = next(t for t in script.TARGETS if t.key == key)
    result = ScanResult(
        tuple(ScanFinding(rule, str(root / rel), line, 1, "m.", "h.", "n") for rel, line, rule
              in findings),
        files_scanned=10, files_parsed=2,
    )
    return script.Outcome(target, root, result, [0.5], prefilter_same=True, full_parse_s=1.0)


def test_expectations_hold_only_for_flagged_old_and_clean_new(script) -> None:
    old = _outcome(script, "vllm-0.9.2", [("vllm/utils/__init__.py", 1167, "SC102"),
                                          ("vllm/utils/__init__.py", 1170, "SC101")])
    new = _outcome(script, "vllm-0.33.0", [])
    assert script.check_expectations([old, new]) == []
    bad_new = _outcome(script, "vllm-0.33.0", [("vllm/utils/torch_utils.py", 1, "SC101")])
    assert script.check_expectations([old, bad_new]) == [
        "vLLM 0.33.0 was flagged for a global stream cache"
    ]
    assert script.check_expectations([_outcome(script, "vllm-0.9.2", []), new]) == [
        "vLLM 0.9.2 was not flagged for its global stream cache"
    ]


def test_markdown_counts_reviewed_and_unreviewed_findings(script) -> None:
    old = _outcome(script, "vllm-0.9.2", [("vllm/utils/__init__.py", 1170, "SC101"),
                                          ("vllm/new.py", 3, "SC103")])
    text = script.render_markdown([old], 3, "0.0, 0.0, 0.0")
    assert "2 findings in 1 trees (10 files): 1 real, 0 false positives, 1 unreviewed" in text
    assert "Precision 1.00 on reviewed findings, recall 1.00" in text
    assert "| vllm-0.9.2 | `vllm/new.py:3` | SC103 n | unreviewed |  |" in text
    assert "the findings were the same for all 1 packages." in text


def test_recall_counts_known_missed_sites_of_the_scanned_trees_only(script, monkeypatch) -> None:
    old = _outcome(script, "vllm-0.9.2", [("vllm/utils/__init__.py", 1170, "SC101")])
    monkeypatch.setattr(script, "KNOWN_MISSED", {
        ("vllm-0.9.2", "vllm/x.py", 1, "SC104"): "missed here",
        ("sglang-0.5.23", "sglang/y.py", 2, "SC104"): "another tree, not scanned this run",
    })
    summary = " ".join(script.summary_lines([old]))
    assert "1 real sites known to be missed" in summary
    assert "recall 0.50" in summary


def test_summary_reports_the_speed_budget_and_slow_files(script) -> None:
    new = _outcome(script, "vllm-0.33.0", [])
    new.times = [6.0]
    new.slowest = ("vllm/big.py", 2.5)
    new.slow_files = [("vllm/big.py", 2.5)]
    summary = " ".join(script.summary_lines([new]))
    assert "Whole vLLM 0.33.0 tree: 6.00 s (budget 5 s: NOT met)" in summary
    assert "files over 2 s: vllm-0.33.0/vllm/big.py 2.50 s" in summary
