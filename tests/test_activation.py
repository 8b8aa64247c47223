"""Turning the audit on from the environment: checked at start-up, reports kept as it goes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamcheck.activation import child_env
from streamcheck.cli.main import main as cli


def run(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def reports(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


@pytest.mark.parametrize(("overlay", "named"), [
    ({"STREAMCHECK": "asert"}, "environment variable STREAMCHECK='asert'"),
    ({"STREAMCHECK_REPORT_DIR": "/proc/streamcheck-cannot-be-here"},
     "environment variable STREAMCHECK_REPORT_DIR="),
])
def test_bad_settings_are_found_at_start_up(tmp_path: Path, overlay: dict[str, str],
                                            named: str) -> None:
    env = {**child_env("record", tmp_path), **overlay}
    proc = run(env, "print('user code ran')")
    assert proc.returncode == 0 and proc.stdout == "user code ran\n"
    assert proc.stderr.count("\n") == 1 and named in proc.stderr
    assert "runs unaudited" in proc.stderr and "Traceback" not in proc.stderr
    strict = run({**env, "STREAMCHECK_STRICT": "1"}, "print('user code ran')")
    assert strict.returncode == 2 and strict.stdout == ""
    assert named in strict.stderr and "refusing to run unaudited" in strict.stderr
    assert "Traceback" not in strict.stderr and strict.stderr.count("\n") == 1


def test_hook_is_silent_where_streamcheck_cannot_be_imported(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "streamcheck"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('another interpreter')\n")
    env = child_env("record", tmp_path / "r")
    env["PYTHONPATH"] += f":{shadow.parent}"
    proc = run(env, "print('ok')")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok\n", "")
    strict = run({**env, "STREAMCHECK_STRICT": "1"}, "print('ok')")
    assert strict.returncode == 2 and "cannot import streamcheck" in strict.stderr


def test_a_process_that_audits_nothing_says_so(tmp_path: Path, capsys) -> None:
    env = child_env("assert", tmp_path)
    assert run(env, "import torch").returncode == 0
    [report] = reports(tmp_path)
    assert report["launches_audited"] == 0 and report["final"] is True
    assert report["stream_reads"].startswith("torch's")  # nothing read natively on a CPU
    assert {t["name"] for t in report["targets"]} >= {"vllm.pynccl", "vllm.kv_connector"}
    assert cli(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "WARNING: 0 launches audited" in " ".join(out.split())
    assert "vllm.pynccl" in out and "not imported" in out


def test_a_child_that_never_imports_torch_writes_nothing(tmp_path: Path) -> None:
    assert run(child_env("assert", tmp_path), "print(1)").returncode == 0
    assert reports(tmp_path) == []


FORK = """
import os, torch
from streamcheck import current_auditor
assert current_auditor() is not None  # audited from start-up
pid = os.fork()
if pid == 0:
    os._exit(0)  # like a multiprocessing fork child: no atexit
os.waitpid(pid, 0)
print(pid)
"""


def test_a_forked_child_keeps_its_own_report_without_atexit(tmp_path: Path) -> None:
    proc = run(child_env("record", tmp_path), FORK)
    assert proc.returncode == 0, proc.stderr
    child = int(proc.stdout)
    by_pid = {r["process"]["pid"]: r for r in reports(tmp_path)}
    assert child in by_pid and len(by_pid) == 2
    assert by_pid[child]["final"] is False  # written at the fork, never at exit
    parent = next(r for pid, r in by_pid.items() if pid != child)
    assert parent["final"] is True
