"""``pytest --streamcheck`` in one process: verdicts, markers, fixture, report, child processes.

Each test runs pytest in-process on a small file (xdist blocked, which also shows the plugin
does not need it). The outer test is not audited itself (skip marker), so this file also works
under an outer ``--streamcheck``.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.no_streamcheck

NO_XDIST = ("-p", "no:xdist", "-p", "no:cacheprovider")

LEAK_AND_CLEAN = """
from simleak import all_reduce_beside_connector

def test_leak():
    all_reduce_beside_connector(leak=True)

def test_clean():
    all_reduce_beside_connector(leak=False)
"""


def test_leaking_test_fails_with_the_finding_text_and_a_clean_one_passes(sc):
    sc.makepyfile(test_it=LEAK_AND_CLEAN)
    result = sc.runpytest("--streamcheck", *NO_XDIST)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "*_ test_leak _*",
        "streamcheck: foreign-stream (1 stream hazard while this test ran, record mode*",
        "[[]foreign-stream[]] launch on a stream another thread made current",
        "*fix: *",
        "*launching thread 'MainThread'*innermost first:",
        "*test_it.py:* in test_leak",
        "*thread 'kv-connector'* made-current stream *",
        "*simleak.py:* in connector",
        "*@pytest.mark.streamcheck(allow=[[]'foreign-stream'[]])",
        "*= streamcheck =*",
        "record mode, 2 launches audited in 2 tests: 1 finding(s) in 1 test(s), 1 failing, 0 not",
        "test_it.py::test_leak",
        "    foreign-stream x1  sim.nccl.all_reduce  in MainThread  [[]FAILED[]]",
        "FAILED test_it.py::test_leak - streamcheck: foreign-stream*",
    ])
    assert "test_clean" not in result.stdout.str().split("= streamcheck =")[1]


def test_summary_uses_rich_when_the_terminal_takes_colour(sc):
    sc.makepyfile(test_it=LEAK_AND_CLEAN)
    result = sc.runpytest("--streamcheck", "--color=yes", *NO_XDIST)
    out = result.stdout.str()
    section = out[out.index("launches audited"):out.index("short test summary")]
    assert "test_it.py::test_leak" in section and "\x1b[" in section
    assert "FAILED" in section and "foreign-stream" in section


def test_allow_marker_lets_the_named_rule_through_but_not_others(sc):
    sc.makepyfile(test_it="""
        import pytest
        from simleak import all_reduce_beside_connector

        @pytest.mark.streamcheck(allow=["foreign-stream"])
        def test_allowed():
            all_reduce_beside_connector(leak=True)

        @pytest.mark.streamcheck(allow=["device-mismatch"])
        def test_other_rule_allowed():
            all_reduce_beside_connector(leak=True)

        @pytest.mark.streamcheck(allow=["foriegn-stream"])
        def test_typo():
            pass
    """)
    result = sc.runpytest("--streamcheck", *NO_XDIST)
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*_ ERROR at setup of test_typo _*",
        "*unknown rule id(s) foriegn-stream; known: foreign-stream, *",
        "*_ test_other_rule_allowed _*",
        "streamcheck: foreign-stream*",
        "test_it.py::test_allowed",
        "    foreign-stream x1 *[[]allowed[]]",
    ])


def test_skip_marker_turns_the_audit_off_for_that_test(sc):
    sc.makepyfile(test_it="""
        import pytest
        import streamcheck
        from streamcheck import installer
        from simleak import all_reduce_beside_connector

        @pytest.mark.no_streamcheck
        def test_not_audited(streamcheck_findings):
            assert streamcheck.current_auditor() is None and installer.installed_patches() == 0
            all_reduce_beside_connector(leak=True)
            assert not streamcheck_findings.active

        def test_audited_again():
            assert streamcheck.current_auditor() is not None
    """)
    result = sc.runpytest("--streamcheck", "-W", "error::DeprecationWarning", *NO_XDIST)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["record mode, 0 launches audited in 1 tests: no findings"])


def test_old_skip_keyword_still_works_and_says_what_replaced_it(sc):
    sc.makepyfile(test_it="""
        import pytest
        import streamcheck
        from simleak import all_reduce_beside_connector

        @pytest.mark.streamcheck(skip=True)
        def test_not_audited():
            assert streamcheck.current_auditor() is None
            all_reduce_beside_connector(leak=True)
    """)
    result = sc.runpytest("--streamcheck=assert", *NO_XDIST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*StreamcheckDeprecationWarning: @pytest.mark.streamcheck("
                                 "skip=...) is deprecated: use @pytest.mark.no_streamcheck*"])


def test_no_streamcheck_takes_no_arguments(sc):
    sc.makepyfile(test_it="""
        import pytest

        @pytest.mark.no_streamcheck(True)
        def test_it():
            pass
    """)
    result = sc.runpytest("--streamcheck", *NO_XDIST)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*no_streamcheck takes no arguments*"])


def test_fixture_shows_the_running_tests_findings(sc):
    sc.makepyfile(test_it="""
        import pytest
        from simleak import all_reduce_beside_connector

        def test_clean_so_far(streamcheck_findings):
            all_reduce_beside_connector(leak=False)
            assert streamcheck_findings.active and streamcheck_findings() == []

        @pytest.mark.streamcheck(allow=["foreign-stream"])
        def test_sees_its_finding(streamcheck_findings):
            all_reduce_beside_connector(leak=True)
            all_reduce_beside_connector(leak=True)
            assert streamcheck_findings.rule_ids == ["foreign-stream"]  # one place, seen twice
            first = streamcheck_findings[0]
            assert first.count == 2 and first.pid is None and first.op == "sim.nccl.all_reduce"
            assert first.finding.launch.thread.name == "MainThread"
            assert "kv-connector" in first.text
    """)
    sc.runpytest("--streamcheck", *NO_XDIST).assert_outcomes(passed=2)


def test_fixture_without_streamcheck_is_inactive(sc):
    sc.makepyfile(test_it="""
        def test_it(streamcheck_findings):
            assert not streamcheck_findings.active and list(streamcheck_findings) == []
    """)
    sc.runpytest(*NO_XDIST).assert_outcomes(passed=1)


def test_report_file_attributes_findings_to_their_tests(sc):
    sc.makepyfile(test_it=LEAK_AND_CLEAN + """
import pytest

@pytest.mark.streamcheck(allow=["foreign-stream"])
def test_allowed_leak():
    all_reduce_beside_connector(leak=True)
""")
    report_path = sc.path / "out" / "streamcheck.json"
    result = sc.runpytest("--streamcheck", f"--streamcheck-report={report_path}", *NO_XDIST)
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines([f"streamcheck report written to {report_path}"])
    report = json.loads(report_path.read_text())
    assert report["schema"] == "streamcheck.report/1"
    assert report["mode"] == "record" and report["tests_audited"] == 3
    assert report["launches_audited"] == 3
    tests = report["tests"]
    assert sorted(tests) == ["test_it.py::test_allowed_leak", "test_it.py::test_leak"]
    (leak,) = tests["test_it.py::test_leak"]
    assert leak["rule"] == "foreign-stream" and leak["allowed"] is False
    assert leak["test"] == "test_it.py::test_leak" and leak["child"] is None
    assert leak["launch"]["op"] == "sim.nccl.all_reduce"
    assert leak["other_event"]["thread"]["name"] == "kv-connector"
    assert [f["allowed"] for f in tests["test_it.py::test_allowed_leak"]] == [True]
    assert {f["rule"] for f in report["findings"]} == {"foreign-stream"}


def test_a_child_process_finding_is_attributed_to_the_test_that_started_it(sc):
    sc.makepyfile(test_it="""
        import subprocess, sys

        CHILD = "from simleak import all_reduce_beside_connector as f; f(leak=True)"

        def test_child_leaks():
            subprocess.run([sys.executable, "-c", CHILD], check=True)

        def test_child_clean():
            subprocess.run([sys.executable, "-c", CHILD.replace("True", "False")], check=True)
    """)
    report_path = sc.path / "r.json"
    result = sc.runpytest("--streamcheck", f"--streamcheck-report={report_path}", *NO_XDIST)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "*_ test_child_leaks _*",
        "streamcheck: foreign-stream*",
        "in child process * (-c):",
        "[[]foreign-stream[]] launch on a stream another thread made current",
    ])
    report = json.loads(report_path.read_text())
    (finding,) = report["tests"]["test_it.py::test_child_leaks"]
    assert finding["child"]["pid"] > 0 and finding["rule"] == "foreign-stream"
    assert report["launches_audited"] == 2  # one in each child


def test_assert_mode_the_raised_error_is_the_failure(sc):
    sc.makepyfile(test_it=LEAK_AND_CLEAN)
    result = sc.runpytest("--streamcheck=assert", *NO_XDIST)
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert "StreamHazardError: launch stopped before it ran" in out
    assert "streamcheck findings (call)" not in out  # not reported a second time
    # The failure section only: with CI set, pytest's short summary repeats the whole message.
    report = out.split("short test summary info")[0]
    assert report.count("[foreign-stream] launch on a stream another thread made current") == 1


def test_a_finding_in_teardown_fails_the_teardown(sc):
    sc.makepyfile(test_it="""
        import pytest
        from simleak import all_reduce_beside_connector

        @pytest.fixture
        def leaks_on_the_way_out():
            yield
            all_reduce_beside_connector(leak=True)

        def test_body_is_clean(leaks_on_the_way_out):
            pass
    """)
    result = sc.runpytest("--streamcheck", *NO_XDIST)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*seen by the end of teardown*"])
