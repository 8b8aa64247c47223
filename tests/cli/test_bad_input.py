"""Bad input is exit 2 and one line naming the file and the problem; findings are never hidden.

Exit 1 is reserved for "a mismatch or a finding": a crash on a file the user pointed at must
not look like one. Each case here crashed (a traceback, exit 1) or misread a file before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from streamcheck.cli.main import main
from streamcheck.core.auditor import Auditor
from streamcheck.core.ids import StreamRef
from streamcheck.core.modes import Mode
from streamcheck.core.report import AuditReport, write_report

RUN_DOC = {"schema": "streamcheck.run/1", "backend": "sim", "seconds": 1.0,
           "summary": {"matched": 1, "mismatched": 0, "skipped": 0},
           "results": [{"repro": "repro_x", "variant": "fixed", "backend": "sim",
                        "world_size": 2, "expected": "clean", "observed": "clean",
                        "verdict": "pass", "seconds": 1.0, "reason": ""}]}


def audit_report() -> AuditReport:
    aud = Auditor(Mode.RECORD)
    aud.review("op.x", StreamRef(1, 3), StreamRef(0, 0), target_device=0, implicit=True)
    report = aud.report()
    assert report.findings, "the audit report must carry a finding for these tests"
    return report


def report_with_finding() -> dict:
    return audit_report().to_dict()


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_saved_run_sorting_first_never_hides_audit_findings(tmp_path, capsys) -> None:
    (tmp_path / "a-run.json").write_text(json.dumps(RUN_DOC))
    write_report(audit_report(), tmp_path / "b-report.json")
    assert main(["report", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "device-mismatch" in out and "repro_x" in out


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda r: r.pop("findings"), "findings"),
    (lambda r: r.update(launches_audited="many"), "launches_audited"),
    (lambda r: r["findings"][0].pop("rule"), "findings/0"),
    (lambda r: r["findings"][0]["launch"].pop("op"), "findings/0/launch"),
    (lambda r: r["findings"][0]["launch"]["stream"].update(device="cuda:0"),
     "findings/0/launch/stream/device"),
    (lambda r: r["findings"][0].update(count=0), "findings/0/count"),
    (lambda r: r.update(findings={"a": 1}), "findings"),
    (lambda r: r["targets"].append({"name": "x", "state": "weird"}), "targets"),
])
def test_a_report_with_missing_or_mistyped_fields_is_refused(tmp_path, capsys, mutate,
                                                             where) -> None:
    report = report_with_finding()
    mutate(report)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    assert main(["report", str(path)]) == 2
    err = one_error_line(capsys)
    assert str(path) in err and where in err


@pytest.mark.parametrize("make", ["directory", "nested", "fifo", "broken-link", "not-json",
                                  "foreign"])
def test_unusable_files_in_a_report_directory(tmp_path, capsys, make) -> None:
    write_report(audit_report(), tmp_path / "good.json")
    bad = tmp_path / "z.json"
    if make == "directory":
        bad.mkdir()
    elif make == "nested":
        bad.write_text("[" * 200_000 + "]" * 200_000)
    elif make == "fifo":
        os.mkfifo(bad)
    elif make == "broken-link":
        bad.symlink_to(tmp_path / "gone.json")
    elif make == "not-json":
        bad.write_text("{nope")
    else:
        bad.write_text(json.dumps({"schema": "someone.else/2"}))
    assert main(["report", str(tmp_path)]) == 2
    assert "z.json" in one_error_line(capsys)


def test_unwritable_outputs_are_usage_errors(tmp_path, capsys) -> None:
    write_report(audit_report(), tmp_path / "r.json")
    (tmp_path / "file").write_text("")
    missing = tmp_path / "file" / "m.json"  # under a file: no directory can be made there
    assert main(["report", str(tmp_path / "r.json"), "--merge-to", str(missing)]) == 2
    assert "--merge-to" in one_error_line(capsys)
    for flag in ("--json", "--junit"):
        assert main(["run", "repro_global_stream_leak_nan", "--backend", "sim",
                     flag, str(missing)]) == 2
        assert flag in one_error_line(capsys)
        assert main(["run", "repro_global_stream_leak_nan", "--backend", "sim",
                     flag, str(tmp_path)]) == 2  # a directory
        assert "is a directory" in one_error_line(capsys)
    assert main(["run", "repro_global_stream_leak_nan", "--backend", "sim", "--keep",
                 str(tmp_path / "file" / "sub")]) == 2
    assert "--keep" in one_error_line(capsys)
    assert main(["list", "--json", str(missing)]) == 2
    assert "--json" in one_error_line(capsys)
    leak = Path(__file__).parents[1] / "scan" / "fixtures" / "vllm092_global_cache.py"
    for flag in ("--json", "--sarif"):
        assert main(["scan", str(leak), flag, str(missing)]) == 2
        assert flag in one_error_line(capsys)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "x"])
def test_timeout_must_be_a_finite_positive_number(value, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "repro_global_stream_leak_nan", "--timeout", value])
    assert info.value.code == 2


def test_a_repeated_variant_runs_once(tmp_path, capsys) -> None:
    js = tmp_path / "run.json"
    assert main(["run", "repro_global_stream_leak_nan", "--backend", "sim", "--variant",
                 "fixed", "--variant", "fixed", "--json", str(js)]) == 0
    assert [r["variant"] for r in json.loads(js.read_text())["results"]] == ["fixed"]


def test_a_repro_file_with_a_syntax_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "repro_broken.py").write_text("SPEC = (\n")
    assert main(["run", "repro_broken", "--backend", "sim", "--repro-dir",
                 str(tmp_path)]) == 2
    err = one_error_line(capsys)
    assert "repro_broken.py:" in err and "syntax error" in err
