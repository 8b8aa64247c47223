"""Mode parsing (errors name their source) and the JSON report round trip."""

from __future__ import annotations

import json

import pytest

from streamcheck import installer
from streamcheck.core.auditor import Auditor
from streamcheck.core.ids import StreamRef
from streamcheck.core.modes import ConfigError, Mode, parse_mode
from streamcheck.core.report import AuditReport, merge_reports, read_report, write_report


@pytest.mark.parametrize("text,mode", [("assert", Mode.ASSERT), (" WARN ", Mode.WARN),
                                       ("record", Mode.RECORD), ("off", Mode.OFF),
                                       ("", Mode.OFF), ("1", Mode.RECORD)])
def test_parse_mode(text, mode):
    assert parse_mode(text, "test") is mode


def test_unknown_mode_in_env_names_variable_and_valid_modes():
    with pytest.raises(ConfigError) as info:
        installer.mode_from_env({"STREAMCHECK": "asert"})
    message = str(info.value)
    assert "STREAMCHECK" in message and "'asert'" in message
    for mode in ("off", "record", "warn", "assert"):
        assert mode in message


def test_install_reads_env_and_rejects_bad_value(monkeypatch):
    monkeypatch.setenv("STREAMCHECK", "loud")
    with pytest.raises(ConfigError, match="STREAMCHECK"):
        installer.install()
    assert installer.installed_patches() == 0


def test_report_round_trip_and_merge(tmp_path):
    aud = Auditor(Mode.RECORD, runtime="sim")
    for _ in range(2):
        aud.review("nccl.all_reduce", StreamRef(0, 5, 0x50), None, 1, implicit=False)
    report = aud.report()
    assert report.findings[0]["rule"] == "device-mismatch"
    assert report.findings[0]["count"] == 2
    path = write_report(report, tmp_path / "a.json")
    again = read_report(path)
    assert again.to_dict() == json.loads(json.dumps(report.to_dict())) == json.loads(
        path.read_text())
    merged = merge_reports([again, again])
    assert merged.findings[0]["count"] == 4
    assert len(merged.merged_from) == 2
    assert AuditReport.from_dict(merged.to_dict()) == merged  # a merged report reads back


def test_the_report_json_keeps_its_shape():
    """The typed report writes exactly the schema's keys, in its order; extras go last."""
    from streamcheck.documents import REPORT_SCHEMA, validate

    aud = Auditor(Mode.RECORD, runtime="sim")
    aud.review("nccl.all_reduce", StreamRef(0, 5, 0x50), None, 1, implicit=False)
    data = aud.report(final=False, note="x").to_dict()
    assert list(data) == ["schema", "process", "mode", "runtime", "final", "launches_audited",
                          "launches_by_op", "targets", "findings", "note"]
    assert list(data["process"]) == ["pid", "host", "argv", "time"]
    assert (data["mode"], data["runtime"], data["final"]) == ("record", "sim", False)
    assert validate(data, "one") == REPORT_SCHEMA
    merged = merge_reports([AuditReport.from_dict(data)]).to_dict()
    assert list(merged)[:3] == ["schema", "merged_from", "per_process"]
    assert "process" not in merged and validate(merged, "merged") == REPORT_SCHEMA
    with pytest.raises(TypeError, match="own fields"):
        aud.report(launches_audited=3)  # set the field, not an extra key of the same name
    with pytest.raises(ValueError, match=r"not a streamcheck\.report/1 report"):
        AuditReport.from_dict({"schema": "streamcheck.run/1"})


def test_read_report_rejects_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{\"hello\": 1}")
    with pytest.raises(ValueError, match="not a streamcheck report"):
        read_report(p)
    with pytest.raises(ValueError, match="no report"):
        read_report(tmp_path / "missing.json")


def _as_other_process(report: dict, pid: int, ident: int, handle: int) -> dict:
    """The same report as another process would write it: its pid, thread ident, handle."""
    text = json.dumps(report)
    finding = report["findings"][0]["launch"]
    text = text.replace(f"{finding['thread']['ident']:#x}", f"{ident:#x}")
    text = text.replace(f"{finding['stream']['handle']:#x}", f"{handle:#x}")
    other = json.loads(text)
    other["process"]["pid"] = pid
    other["findings"][0]["launch"]["thread"]["ident"] = ident
    other["findings"][0]["launch"]["stream"]["handle"] = handle
    return other


def test_findings_of_different_processes_merge_by_call_site_not_message():
    from streamcheck.documents import REPORT_SCHEMA, validate

    aud = Auditor(Mode.RECORD, runtime="sim")
    aud.review("nccl.all_reduce", StreamRef(0, 5, 0x50), None, 1, implicit=False)
    one = json.loads(json.dumps(aud.report().to_dict()))
    two = _as_other_process(one, pid=one["process"]["pid"] + 1, ident=0xABC, handle=0x77)
    assert two["findings"][0]["message"] != one["findings"][0]["message"]
    cuda = dict(two, runtime="cuda", mode="assert")
    merged = merge_reports([AuditReport.from_dict(one), AuditReport.from_dict(cuda)])
    assert merged.findings[0]["pids"] == [one["process"]["pid"], two["process"]["pid"]]
    merged = merged.to_dict()
    assert len(merged["findings"]) == 1, merged["findings"]
    assert merged["findings"][0]["count"] == 2
    assert merged["findings"][0]["pids"] == [one["process"]["pid"], two["process"]["pid"]]
    assert (merged["mode"], merged["runtime"]) == ("mixed", "mixed")
    assert validate(merged, "merged") == REPORT_SCHEMA

    elsewhere = json.loads(json.dumps(two))
    elsewhere["findings"][0]["launch"]["stack"][0]["line"] += 1  # another launching line
    assert len(merge_reports([AuditReport.from_dict(one),
                              AuditReport.from_dict(elsewhere)]).findings) == 2

    # a merged report merges again by its parts
    again = merge_reports([AuditReport.from_dict(merged), AuditReport.from_dict(one)]).to_dict()
    assert again["findings"][0]["count"] == 3
    assert len(again["merged_from"]) == len(again["per_process"]) == 3
    assert (again["mode"], again["runtime"]) == ("mixed", "mixed")
    assert validate(again, "merged again") == REPORT_SCHEMA


def test_runtime_follows_the_stream_reader():
    from streamcheck.runtime import cuda

    before = cuda._override
    cuda.use_reader(cuda.StreamReader(lambda d: (0, d, 1), lambda: 0, name="sim"))
    auditor = installer.install("record")
    try:
        assert auditor.report().runtime == "sim"
    finally:
        installer.uninstall()
        cuda.use_reader(before)


def test_each_process_says_how_it_read_current_streams_and_the_merge_keeps_it():
    """A written process report's ``stream_reads`` (the writer adds it) is rendered with the
    report, kept in the merged report's per-process lines and grouped there; a process that
    audited nothing is left out of the line (it never needed a read)."""
    from streamcheck.render.coverage import plain_lines, stream_reads_line

    def written(pid: int, launches: int, reads: str) -> AuditReport:
        report = Auditor(Mode.RECORD, runtime="cuda").report(stream_reads=reads)
        report.launches_audited = launches
        report.process = dict(report.process, pid=pid)
        return report

    native = "native (c10::cuda), proven; devices 0"
    one = written(11, 5, native)
    assert stream_reads_line(one) == f"current streams read: {native}"
    assert f"current streams read: {native}" in plain_lines(one)
    merged = merge_reports([one, written(12, 7, native),
                            written(13, 2, "torch's (the native read not proven yet)"),
                            written(14, 0, "torch's (the native read not proven yet)")])
    assert [p.get("stream_reads") for p in merged.per_process] == [
        native, native, "torch's (the native read not proven yet)",
        "torch's (the native read not proven yet)"]
    assert stream_reads_line(merged) == (
        f"current streams read: {native} (pid 11, 12); "
        "torch's (the native read not proven yet) (pid 13)")
    assert stream_reads_line(Auditor(Mode.RECORD).report()) is None  # not a written one
    from streamcheck.documents import REPORT_SCHEMA, validate

    assert validate(one.to_dict(), "one") == validate(merged.to_dict(), "merged") == REPORT_SCHEMA
