"""``pytest --streamcheck -n 2``: workers audit, the controller prints and writes one merge."""

from __future__ import annotations

import json

import pytest

from streamcheck.documents import REPORT_SCHEMA, validate

pytest.importorskip("xdist")

pytestmark = pytest.mark.no_streamcheck


def test_workers_ship_findings_and_the_controller_merges_them(sc):
    sc.makepyfile(test_one="""
        from simleak import all_reduce_beside_connector

        def test_leak_one():
            all_reduce_beside_connector(leak=True)

        def test_clean_one():
            all_reduce_beside_connector(leak=False)
    """, test_two="""
        from simleak import all_reduce_beside_connector

        def test_leak_two():
            all_reduce_beside_connector(leak=True)

        def test_clean_two():
            all_reduce_beside_connector(leak=False)
    """)
    report_path = sc.path / "merged.json"
    result = sc.runpytest_subprocess(
        "--streamcheck", f"--streamcheck-report={report_path}", "-p", "xdist", "-n", "2",
        "--dist", "loadfile", "-p", "no:cacheprovider", timeout=120,
    )
    result.assert_outcomes(failed=2, passed=2)
    out = result.stdout.str()
    assert out.count("= streamcheck =") == 1  # one summary, from the controller
    result.stdout.fnmatch_lines([
        "*_ test_leak_one _*",
        "streamcheck: foreign-stream*",
        "[[]foreign-stream[]] launch on a stream another thread made current",
        "record mode, 4 launches audited in 4 tests on 2 workers: "
        "2 finding(s) in 2 test(s), 2 failing, 0 not",
    ])
    report = json.loads(report_path.read_text())
    assert validate(report, "merged pytest report") == REPORT_SCHEMA
    assert report["runtime"] == "sim", report["runtime"]  # simleak's processes ran on the sim
    assert report["processes"] == 2 and len(report["merged_from"]) == 2
    assert report["tests_audited"] == 4 and report["launches_audited"] == 4
    assert sorted(report["tests"]) == ["test_one.py::test_leak_one", "test_two.py::test_leak_two"]
    for nodeid, found in report["tests"].items():
        assert [(f["rule"], f["test"], f["allowed"]) for f in found] == [
            ("foreign-stream", nodeid, False)]
    assert len({p["pid"] for p in report["merged_from"]}) == 2
    # each worker says how it read current streams: through the simulator's reader, never
    # the native one (the summary groups the workers by that answer)
    reads = {p["stream_reads"] for p in report["per_process"]}
    assert len(reads) == 1 and reads.pop().startswith("torch's"), report["per_process"]
    result.stdout.fnmatch_lines(["current streams read: torch's*(pid *, *)"])
