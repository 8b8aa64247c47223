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
    assert "2 findings, 1 real, 0 false positives, 1 unreviewed" in text
    assert "| vllm-0.9.2 | `vllm/new.py:3` | SC103 n | unreviewed |  |" in text
    assert "the findings were the same for all 1 packages." in text
