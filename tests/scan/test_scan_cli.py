"""The contract the ``streamcheck`` front end relies on: argument names and exit codes."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

from streamcheck.scan.cli import add_scan_arguments, run_scan_command
from streamcheck.scan.resolve import ScanTargetError, resolve_target

FIXTURES = Path(__file__).parent / "fixtures"
LEAK = (FIXTURES / "vllm092_global_cache.py").read_text(encoding="utf-8")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamcheck scan")
    add_scan_arguments(parser)
    return parser.parse_args(argv)


def run(argv: list[str]) -> tuple[int, str]:
    console = Console(file=io.StringIO(), width=200, record=True)
    code = run_scan_command(parse(argv), console)
    return code, console.export_text()


def test_arguments_have_the_agreed_names() -> None:
    args = parse(["a", "b", "--json", "o.json", "--sarif", "o.sarif",
                  "--select", "SC101,SC102", "--select", "SC104", "--ignore", "SC102"])
    assert args.targets == ["a", "b"]
    assert (args.json, args.sarif) == ("o.json", "o.sarif")
    assert args.select == ["SC101,SC102", "SC104"] and args.ignore == ["SC102"]
    bare = parse(["a"])
    assert bare.json is None and bare.sarif is None and bare.select is None and bare.ignore is None


def test_findings_exit_1_and_write_json_and_sarif(tmp_path: Path) -> None:
    out_json, out_sarif = tmp_path / "r" / "scan.json", tmp_path / "scan.sarif"
    code, text = run([str(FIXTURES / "vllm092_global_cache.py"),
                      "--json", str(out_json), "--sarif", str(out_sarif)])
    assert code == 1
    assert "SC101" in text and "SC102" in text
    assert json.loads(out_json.read_text())["summary"]["findings"] == 2
    assert json.loads(out_sarif.read_text())["version"] == "2.1.0"


def test_clean_scan_exits_0() -> None:
    code, text = run([str(FIXTURES / "vllm033_thread_local.py")])
    assert code == 0 and "0 finding(s)" in text


def test_select_filters_findings_and_bad_rule_exits_2() -> None:
    code, _ = run([str(FIXTURES / "vllm092_global_cache.py"), "--select", "SC103"])
    assert code == 0
    code, text = run([str(FIXTURES), "--ignore", "no-such-rule"])
    assert code == 2 and "unknown rule 'no-such-rule'" in text


def test_unknown_target_exits_2_with_a_clear_message() -> None:
    code, text = run(["definitely_not_a_package_or_path_123"])
    assert code == 2
    assert "neither an existing file or directory nor an installed package" in text


def _make_package(root: Path) -> None:
    pkg = root / "leaky_pkg_for_scan"
    (pkg / "sub").mkdir(parents=True)
    # Importing it would raise: the scan must locate it without importing it.
    (pkg / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    (pkg / "sub" / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    (pkg / "sub" / "utils.py").write_text(LEAK)


def test_package_name_is_located_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _make_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, text = run(["leaky_pkg_for_scan"])
    assert code == 1 and "SC101" in text
    assert resolve_target("leaky_pkg_for_scan.sub") == (tmp_path / "leaky_pkg_for_scan" / "sub",)
    assert resolve_target("leaky_pkg_for_scan.sub.utils") == (
        tmp_path / "leaky_pkg_for_scan" / "sub" / "utils.py",
    )
    assert not any(m.startswith("leaky_pkg_for_scan") for m in sys.modules)


def test_a_path_is_scanned_as_is_even_if_a_package_has_that_name(tmp_path: Path) -> None:
    (tmp_path / "json").mkdir()
    assert resolve_target(tmp_path / "json") == (tmp_path / "json",)


def test_builtin_module_has_no_source() -> None:
    with pytest.raises(ScanTargetError, match="compiled or built-in"):
        resolve_target("sys")
