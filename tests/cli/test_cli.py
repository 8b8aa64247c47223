"""The command line: exit codes CI can trust, clear errors, machine-readable outputs."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from streamcheck.cli.main import main


def test_unknown_repro_is_usage_error_listing_known(capsys):
    assert main(["run", "repro_nope*", "--backend", "sim"]) == 2
    err = capsys.readouterr().err
    assert "no repro matches 'repro_nope*'" in err and "repro_global_stream_leak_nan" in err


def test_cuda_backend_without_gpu_is_usage_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["run", "repro_global_stream_leak_nan", "--backend", "cuda"]) == 2
    assert "cannot run" in capsys.readouterr().err


def test_bad_option_values_are_rejected():
    with pytest.raises(SystemExit) as info:
        main(["run", "repro_*", "--timeout", "-1"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["run", "repro_*", "--backend", "tpu"])


def test_list_shows_every_repro(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "repro_global_stream_leak_error400" in out and "foreign-stream" in out


def test_run_writes_json_and_junit_and_report_renders_them(tmp_path, capsys):
    js, xml = tmp_path / "run.json", tmp_path / "run.xml"
    code = main(["run", "repro_global_stream_leak_nan", "--backend", "sim", "--variant", "fixed",
                 "--variant", "guarded", "--json", str(js), "--junit", str(xml)])
    assert code == 0
    doc = json.loads(js.read_text())
    assert doc["schema"] == "streamcheck.run/1" and doc["backend"] == "sim"
    assert [r["variant"] for r in doc["results"]] == ["fixed", "guarded"]
    assert all(r["verdict"] == "pass" for r in doc["results"])
    suite = ET.fromstring(xml.read_text())
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    capsys.readouterr()
    assert main(["report", str(js)]) == 0
    assert "guarded" in capsys.readouterr().out


def test_report_of_missing_or_foreign_file_is_usage_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.json")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert main(["report", str(bad)]) == 2


def test_version_help_and_module_entry_point(capsys) -> None:
    import subprocess
    import sys

    from streamcheck import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"streamcheck {__version__}"
    proc = subprocess.run([sys.executable, "-m", "streamcheck", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert "exit codes:" in proc.stdout and "examples:" in proc.stdout
    for command in ("run", "list", "report", "env", "scan", "doctor", "completion"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), command  # listed as a command


def test_a_green_run_removes_its_temp_logs_and_shows_no_expected_hang_stacks(capsys) -> None:
    import re
    from pathlib import Path

    assert main(["run", "repro_global_stream_leak_error400", "--backend", "sim"]) == 0
    out = capsys.readouterr().out
    assert "logs removed" in out and "hung process" not in out
    assert not re.search(r"streamcheck-run-\w+", out) or not any(
        Path(m).exists() for m in re.findall(r"/tmp/streamcheck-run-\w+", out))


def test_too_few_gpus_for_a_repro_is_said_not_raised(capsys) -> None:
    assert main(["run", "repro_global_stream_leak_error400", "--backend", "sim", "--gpus",
                 "1"]) == 0
    assert "needs 2 ranks, --gpus 1 given" in " ".join(capsys.readouterr().out.split())


def test_junit_carries_time_host_and_the_failure_details(tmp_path) -> None:
    import xml.etree.ElementTree as ET

    from streamcheck.render.junit import junit_xml

    rows = [{"repro": "r", "variant": "buggy", "backend": "sim", "world_size": 2,
             "expected": "hang", "observed": "clean", "verdict": "fail", "seconds": 3.0,
             "reason": "no hang", "dumps": {"42": "Thread 1: all_reduce"},
             "stderr": {"rank0.stderr": "boom"}},
            {"repro": "r", "variant": "fixed", "backend": "sim", "world_size": 2,
             "expected": "clean", "observed": "-", "verdict": "cancelled", "seconds": 0.0,
             "reason": "the run was stopped by a signal"}]
    suite = ET.fromstring(junit_xml(rows, wall_seconds=2.5))
    assert suite.get("failures") == "1" and suite.get("errors") == "1"
    assert suite.get("time") == "2.50" and suite.get("hostname") and suite.get("timestamp")
    err = suite.find("testcase/system-err").text
    assert "all_reduce" in err and "boom" in err


def test_list_groups_by_hazard_and_names_the_public_reports(capsys):
    from streamcheck.cli.list_cmd import listing

    document = listing(None)
    by_name = {r["name"]: r for r in document["repros"]}
    war = by_name["repro_kv_load_overwrites_read_block"]
    assert war["hazard"] == "write-after-read" and war["mechanism"]
    assert [r["ref"] for r in war["reports"]] == ["vllm-project/vllm#47282"]
    assert war["reports"][0]["url"] == "https://github.com/vllm-project/vllm/issues/47282"
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "vllm-project/vllm#47282" in out and "write-after-write" in out


def test_a_report_reference_must_be_owner_repo_number():
    from streamcheck.repro.spec import PublicReport

    with pytest.raises(ValueError, match="owner/repo#number"):
        PublicReport("vllm#47282", "https://github.com/vllm-project/vllm/issues/47282")
    with pytest.raises(ValueError, match="https"):
        PublicReport("vllm-project/vllm#1", "github.com/vllm-project/vllm/issues/1")
