"""The scan driver: errors never crash it, select/ignore, suppression, pre-filter, contexts."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamcheck.scan import RULES, UnknownRuleError, scan_paths
from streamcheck.scan.engine import could_match
from streamcheck.scan.rules import Hit, Rule, enabled_rules
from streamcheck.scan.suppress import is_suppressed, suppressed_rules

FIXTURES = Path(__file__).parent / "fixtures"
SCAN_PACKAGE = Path(__file__).parents[2] / "streamcheck" / "scan"


def test_syntax_error_is_recorded_and_other_files_still_scanned(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "syntax_error.py.txt", tmp_path / "broken.py")
    shutil.copy(FIXTURES / "vllm092_global_cache.py", tmp_path / "leaky.py")
    result = scan_paths([tmp_path])
    assert len(result.errors) == 1
    error = result.errors[0]
    assert error.path.endswith("broken.py") and error.line == 3
    assert "syntax error" in error.message
    assert {f.rule_id for f in result.findings} == {"SC101", "SC102"}
    assert result.files_scanned == 1


def test_missing_path_is_an_error_not_a_crash(tmp_path: Path) -> None:
    result = scan_paths([tmp_path / "nope"])
    assert result.findings == () and result.errors[0].message == "no such file or directory"


def test_files_no_rule_can_match_are_not_parsed(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text("x = (\n")  # invalid, but never parsed
    (tmp_path / "mentions.py").write_text("x = (  # a stream, but no thread, accessor, patch\n")
    (tmp_path / "threads.py").write_text("import threading\ns = torch.cuda.Stream()\n")
    result = scan_paths([tmp_path])
    assert result.errors == ()
    assert result.files_scanned == 3 and result.files_parsed == 1


@pytest.mark.parametrize(
    "text",
    [
        "def current_stream():",
        "async def _get_cur_stream(self):",
        "torch.cuda.set_stream = f",
        "torch.npu.set_stream: Callable = f",
        "setattr(torch.cuda, 'set_stream', f)",
        "threading.Thread(target=f)\ntorch.cuda.Stream()",
        "Timer(1, f)\nwith torch.cuda.stream(s): pass",
        "pool_executor.submit(f)\nfrom torch.cuda import default_stream as ds",
        "stream = torch.cuda.current_stream()",
        "def f():\n    self.__class__.s = torch.mtia.current_stream()",
        "def f():\n    global S\n    S = torch.cuda.current_stream()",
        "@functools.lru_cache\ndef main():\n    return torch.cuda.current_stream()",
    ],
)
def test_prefilter_keeps_every_file_a_rule_could_flag(text: str) -> None:
    assert could_match(text.encode())


@pytest.mark.parametrize(
    "text",
    ["x = 1", "import threading  # stream docs", "s.wait_stream(t)"],
)
def test_prefilter_drops_files_no_rule_can_flag(text: str) -> None:
    assert not could_match(text.encode())


def test_scan_without_prefilter_finds_the_same() -> None:
    fast = scan_paths([FIXTURES])
    slow = scan_paths([FIXTURES], prefilter=False)
    assert slow.findings == fast.findings
    assert slow.files_parsed == slow.files_scanned > fast.files_parsed


def test_prefilter_keeps_every_fixture_with_expectations() -> None:
    for path in FIXTURES.rglob("*.py"):
        data = path.read_bytes()
        if b"# expect:" in data:
            assert could_match(data), path


def test_same_file_given_twice_is_scanned_once() -> None:
    path = FIXTURES / "vllm092_global_cache.py"
    result = scan_paths([path, FIXTURES / "." / path.name])
    assert result.files_scanned == 1 and len(result.findings) == 2


@pytest.mark.parametrize(
    ("select", "ignore", "expected"),
    [
        (["SC101"], None, {"SC101"}),
        (["global-stream-cache", "SC102"], None, {"SC101", "SC102"}),
        (["SC101,patched-set-stream-global"], None, {"SC101", "SC102"}),
        (None, ["SC102"], {"SC101"}),
        (None, ["patched-set-stream-global"], {"SC101"}),
        (["SC1"], ["SC101"], {"SC102"}),
    ],
)
def test_select_and_ignore_accept_ids_names_and_prefixes(select, ignore, expected) -> None:
    result = scan_paths([FIXTURES / "vllm092_global_cache.py"], select=select, ignore=ignore)
    assert {f.rule_id for f in result.findings} == expected


def test_result_lists_the_rules_it_reported_on() -> None:
    result = scan_paths([FIXTURES / "vllm092_global_cache.py"], select=["SC1"], ignore=["SC103"])
    assert result.rules == ("SC101", "SC102", "SC104", "SC105")


def test_unknown_rule_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UnknownRuleError, match="SC101 \\(global-stream-cache\\)"):
        enabled_rules(["SC999"])


def test_ignoring_sc102_still_lets_it_qualify_sc104() -> None:
    path = FIXTURES / "stream_context_with_patch.py"
    result = scan_paths([path], select=["SC104"])
    lines = path.read_text().splitlines()
    expected = [n for n, text in enumerate(lines, 1) if "expect: SC104" in text]
    assert [f.line for f in result.findings] == expected
    assert all("(set_stream patch at " in f.message for f in result.findings)


def test_sc104_needs_the_leaking_package_in_the_scan() -> None:
    alone = scan_paths([FIXTURES / "pkg_leaky" / "connector.py"])
    assert alone.findings == ()
    together = scan_paths([FIXTURES / "pkg_leaky"])
    assert "SC104" in {f.rule_id for f in together.findings}


@pytest.mark.parametrize(
    ("line", "rule_id", "name", "suppressed"),
    [
        ("x = 1  # streamcheck: ignore", "SC101", "global-stream-cache", True),
        ("x = 1  # streamcheck: ignore[SC101]", "SC101", "global-stream-cache", True),
        ("x = 1  # streamcheck: ignore[SC102]", "SC101", "global-stream-cache", False),
        ("x = 1  # streamcheck:ignore[global-stream-cache]", "SC101", "global-stream-cache", True),
        ("x = 1  # STREAMCHECK: ignore[sc101, SC102]", "SC102", "whatever", True),
        ("x = 1  # noqa", "SC101", "global-stream-cache", False),
    ],
)
def test_suppression_comments(line: str, rule_id: str, name: str, suppressed: bool) -> None:
    assert is_suppressed(line, rule_id, name) is suppressed


def test_suppressed_rules_parsing() -> None:
    assert suppressed_rules("# streamcheck: ignore") == frozenset()
    assert suppressed_rules("code") is None


def test_a_crashing_rule_costs_one_file_not_the_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(index):
        raise RuntimeError("bug")
        yield Hit(1, 1, "never")

    monkeypatch.setitem(RULES, "SC199", Rule("SC199", "boom", "boom", "none", boom))
    result = scan_paths([FIXTURES / "vllm092_global_cache.py"])
    assert result.findings == ()
    assert "internal error" in result.errors[0].message


def test_scan_package_imports_no_heavy_or_front_end_modules() -> None:
    code = (
        "import sys, streamcheck.scan, streamcheck.scan.cli, streamcheck.scan.output\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'vllm', 'pytest', 'rich')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_rich_is_imported_only_inside_the_rich_renderer() -> None:
    for path in SCAN_PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: function-level imports are lazy
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                    a.name for a in node.names
                ]
                assert not any(n.split(".")[0] in ("rich", "torch", "vllm") for n in names), path


def test_rule_ids_are_stable_and_unique() -> None:
    assert list(RULES) == ["SC101", "SC102", "SC103", "SC104", "SC105"]
    assert len({r.name for r in RULES.values()}) == len(RULES)
    assert all(rule_id == rule.id for rule_id, rule in RULES.items())


def test_a_symlink_loop_is_reported_not_raised(tmp_path) -> None:
    from streamcheck.scan.engine import scan_paths

    (tmp_path / "a.py").symlink_to(tmp_path / "b.py")
    (tmp_path / "b.py").symlink_to(tmp_path / "a.py")
    (tmp_path / "c.py").write_text("import torch\n")
    result = scan_paths([str(tmp_path)])
    assert sorted(e.path.rsplit("/", 1)[-1] for e in result.errors) == ["a.py", "b.py"]


def test_work_per_module_grows_linearly_with_its_functions(tmp_path, monkeypatch) -> None:
    """A module of N accessor-like functions that return non-stream globals: each function's
    writes are collected once (before: once per accessor, N squared; a 500 KB module took
    minutes). Counted, not timed."""
    from streamcheck.scan import state
    from streamcheck.scan.engine import scan_paths

    calls = {"writes": 0}
    real = state.state_writes

    def counted(index, func):
        calls["writes"] += 1
        return real(index, func)

    monkeypatch.setattr(state, "state_writes", counted)
    for n in (50, 400):
        calls["writes"] = 0
        src = "import torch\n" + "".join(
            f"_cfg_{i} = {{}}\ndef current_stream_{i}():\n    return _cfg_{i}\n" for i in range(n))
        path = tmp_path / f"m{n}.py"
        path.write_text(src)
        scan_paths([str(path)])
        assert calls["writes"] <= 2 * n, (n, calls["writes"])


_PATCH = (
    "import torch\n_current = None\n_orig = torch.cuda.set_stream\n\n\n"
    "def _patched(stream):\n    global _current\n    _current = stream\n    _orig(stream)\n\n\n"
    "torch.cuda.set_stream = _patched\n"
)
_THREAD = (
    "import threading\n\nimport torch\n\n{imports}\n\n\ndef loop(stream):\n"
    "    with torch.cuda.stream(stream):\n        pass\n\n\n"
    "threading.Thread(target=loop, args=(None,)).start()\n"
)


def _sc104(root: Path) -> list[str]:
    return [Path(f.path).name for f in scan_paths([root]).findings if f.rule_id == "SC104"]


def test_sc104_follows_imports_from_a_repository_layout(tmp_path: Path) -> None:
    """A repository keeps its package under ``python/`` (as sglang does): scanning the
    repository, ``import eng.utils`` resolves from ``python/``, not from the repository."""
    pkg = tmp_path / "repo" / "python" / "eng"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "utils.py").write_text(_PATCH)
    (pkg / "worker.py").write_text(_THREAD.format(imports="import eng.utils"))
    (pkg / "server.py").write_text(_THREAD.format(imports="import eng"))
    assert _sc104(tmp_path / "repo") == ["worker.py"]


def test_sc104_prefers_the_importers_own_project(tmp_path: Path) -> None:
    """Two projects scanned together both have ``eng/utils.py``; only one patches set_stream.
    Each worker imports its own project's module."""
    for name, utils in (("old", _PATCH), ("new", "import torch\n")):
        pkg = tmp_path / name / "eng"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "utils.py").write_text(utils)
        (pkg / "worker.py").write_text(_THREAD.format(imports="from eng import utils"))
    found = [f.path for f in scan_paths([tmp_path]).findings if f.rule_id == "SC104"]
    assert [Path(p).parent.parent.name for p in found] == ["old"]


@pytest.mark.parametrize(
    "source",
    [
        # a device module's current stream stored into a global
        "import torch\n_S = None\ndef remember():\n    global _S\n"
        "    _S = torch.get_device_module().current_stream()\n",
        # a module-level store spread over lines
        "import torch\n_STREAM = (\n    torch.cuda.current_stream()\n)\n",
    ],
)
def test_prefilter_keeps_stores_of_the_current_stream_the_rules_find(tmp_path, source):
    (tmp_path / "m.py").write_text(source)
    fast, slow = scan_paths([tmp_path]), scan_paths([tmp_path], prefilter=False)
    assert [f.rule_id for f in fast.findings] == ["SC101"]
    assert fast.findings == slow.findings


def test_a_scripts_main_block_is_not_shared_state(tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch\n\nif __name__ == '__main__':\n    s = torch.cuda.current_stream()\n"
    )
    assert scan_paths([tmp_path]).findings == ()


def test_a_helper_that_sets_the_device_is_seen_whatever_order_threads_start_in(tmp_path):
    """The device-setting helper is looked up 3 calls deep from each caller: a memo of a
    shallower look must not answer a deeper one."""
    (tmp_path / "m.py").write_text(
        "import threading\nimport torch\n\n"
        "def k():\n    torch.cuda.set_device(1)\n\ndef h():\n    k()\n\n"
        "def g():\n    h()\n\ndef f():\n    g()\n\n"
        "def worker_a():\n    f()\n    torch.cuda.Stream()\n\n"
        "def worker_b():\n    h()\n    torch.cuda.Stream()\n\n"
        "def start():\n    threading.Thread(target=worker_b).start()\n"
        "    threading.Thread(target=worker_a).start()\n"
    )
    lines = sorted(f.line for f in scan_paths([tmp_path]).findings if f.rule_id == "SC103")
    assert lines == [18]  # worker_a: set_device 4 calls deep is past the look; worker_b is set
