"""``streamcheck doctor`` end to end: environment report, JSON, exit codes, honest failures.

The probe runs against small stand-in vLLM trees (see conftest) so these tests need no vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamcheck.cli.main import main
from streamcheck.doctor import environment
from streamcheck.doctor.model import Verdict
from streamcheck.doctor.runner import ProbeRequest, diagnose
from tests.doctor.conftest import HANGS, LEAKY, SOUND, make_tree


def read_json(path: Path) -> dict:
    doc = json.loads(path.read_text())
    assert doc["schema"] == "streamcheck.doctor/1"
    return doc


def test_environment_only_report_and_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--no-probe", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("Python", "audit hooks", "torch", "CUDA", "NCCL", "vLLM", "py-spy"):
        assert name in text
    doc = read_json(out)
    assert [e["name"] for e in doc["environment"]] == [
        "Python", "audit hooks", "current-stream reads", "torch", "CUDA", "NCCL", "vLLM",
        "py-spy"]
    assert doc["probes"] == [] and doc["hazards"] == [] and doc["exit_code"] == 0


def test_leaky_tree_exits_1_and_json_matches(tmp_path: Path, capsys) -> None:
    tree = make_tree(tmp_path / "leaky", LEAKY)
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--vllm-path", str(tree), "--backend", "sim",
                 "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "AFFECTED" in text and "module-global cache" in text
    doc = read_json(out)
    verdicts = {h["hazard"]: h["verdict"] for h in doc["hazards"]}
    assert verdicts == {"module-global-cache": "affected", "fresh-thread-device": "not-affected",
                        "stale-cache": "affected"}
    assert doc["affected"] == ["module-global-cache", "stale-cache"] and doc["exit_code"] == 1
    probe = doc["probes"][0]
    assert probe["vllm"]["version"] == "0.0.1" and probe["vllm"]["shim"]
    assert probe["vllm"]["location"].startswith(str(tree))
    assert all(h["fix"] and h["evidence"] for h in doc["hazards"])


def test_sound_tree_exits_0_with_every_hazard_not_affected(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "sound", SOUND)
    report = diagnose(ProbeRequest(vllm_path=[str(tree)], backend="sim"))
    assert {r.verdict for r in report.results} == {Verdict.NOT_AFFECTED}, [
        r.evidence for r in report.results]
    assert report.exit_code == 0


def test_cuda_backend_on_stand_in_trees(tmp_path: Path) -> None:
    """The real-CUDA probe path (skipped without a GPU; the simulator covers it here)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        pytest.skip("no CUDA device here")
    leaky = diagnose(ProbeRequest(vllm_path=[str(make_tree(tmp_path / "l", LEAKY))],
                                  backend="cuda"))
    sound = diagnose(ProbeRequest(vllm_path=[str(make_tree(tmp_path / "s", SOUND))],
                                  backend="cuda"))
    cuda_rows = {r.hazard: r.verdict for r in leaky.results if r.backend == "cuda"}
    assert cuda_rows["module-global-cache"] is Verdict.AFFECTED
    assert cuda_rows["stale-cache"] is Verdict.AFFECTED
    assert Verdict.AFFECTED not in {r.verdict for r in sound.results}
    if count == 1:  # the simulator answers the two-device question, in its own row
        assert [r.backend for r in sound.results if r.hazard == "fresh-thread-device"] == [
            "cuda", "sim"]


def test_probe_that_hangs_is_killed_and_cannot_tell(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "hangs", HANGS)
    report = diagnose(ProbeRequest(vllm_path=[str(tree)], backend="sim", timeout=1.0))
    assert len(report.results) == 3
    assert {r.verdict for r in report.results} == {Verdict.CANNOT_TELL}
    assert "did not finish within 1 s" in report.probes[0].error
    assert report.exit_code == 0


def test_missing_vllm_is_cannot_tell_with_the_way_to_get_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    report = diagnose(ProbeRequest(vllm_path=[str(empty)], backend="sim"))
    if report.probes[0].vllm.version is not None:
        pytest.skip("a vLLM is installed in this environment")
    assert {r.verdict for r in report.results} == {Verdict.CANNOT_TELL}
    assert "python -m tools.vllm_env prepare VERSION" in report.probes[0].error


@pytest.mark.parametrize("argv", [
    ["doctor", "--vllm-path", "/nonexistent/streamcheck-doctor"],
    ["doctor", "--backend", "cuda"],
])
def test_usage_errors_exit_2(argv: list[str], capsys) -> None:
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(argv) == 2
    assert "streamcheck doctor:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["doctor", "--timeout", "-1"], ["doctor", "--backend", "tpu"]])
def test_bad_option_values_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


# --------------------------------------------------------------------------- environment


def test_nccl_not_loadable_says_why(monkeypatch) -> None:
    import streamcheck.runtime.nccl as nccl

    def refuse(*_a, **_k):
        raise nccl.NcclUnavailable("No NCCL library found.\nTried, in order:\n  - here")

    monkeypatch.setattr(nccl, "NcclLibrary", refuse)
    item = environment.nccl_item()
    assert item.value == "not loadable: No NCCL library found."
    assert item.detail and "Tried, in order" in item.detail


def test_nccl_version_when_loadable(monkeypatch) -> None:
    import streamcheck.runtime.nccl as nccl

    class Lib:
        path = "/opt/nccl/libnccl.so.2"

        def version(self) -> str:
            return "2.28.9"

    monkeypatch.setattr(nccl, "NcclLibrary", Lib)
    item = environment.nccl_item()
    assert (item.value, item.ok, item.detail) == ("2.28.9", True, "/opt/nccl/libnccl.so.2")


def test_py_spy_absent_and_present(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(environment.shutil, "which", lambda _name: None)
    assert environment.py_spy_item().value == "not found on PATH"
    fake = tmp_path / "py-spy"
    fake.write_text("#!/bin/sh\necho 'py-spy 9.9.9'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(environment.shutil, "which", lambda _name: str(fake))
    item = environment.py_spy_item()
    assert (item.value, item.ok) == ("9.9.9", True)


def test_vllm_version_comes_from_metadata(monkeypatch) -> None:
    import streamcheck.vllm_compat as compat

    monkeypatch.setattr(compat, "vllm_version", lambda: "0.9.2")
    assert environment.vllm_item().value == "0.9.2"
    monkeypatch.setattr(compat, "vllm_version", lambda: None)
    assert environment.vllm_item().value == "not installed here"


def test_torch_and_cuda_lines_match_this_torch() -> None:
    import torch

    items = {i.name: i for i in environment.torch_items()}
    assert items["torch"].value.startswith(torch.__version__)
    if not torch.cuda.is_available():
        assert items["CUDA"].value.startswith("not available")
