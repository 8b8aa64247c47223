"""The ``soak_serve`` case's driver (``scripts/engine_check.py``) end to end, against a fake
``vllm serve`` (``fake_vllm/``): the server started as the case starts it, the load, the
comparison with the reference tokens, the memory samples, and the whole server process group
gone afterwards. The real engine runs this on the GPU machine."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parents[1] / "scripts"
FAKE = HERE / "fake_vllm"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


engine_check = load("engine_check", SCRIPTS / "engine_check.py")
fake = load("fake_vllm_answers", FAKE / "vllm" / "__init__.py")  # not as ``vllm``


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def soak(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_check, "SERVE_PORT", free_port())
    prompts = engine_check.family_prompts(fake.VOCAB)
    ref = {"tokens": {str(i): [fake.answer(p, 48)] for i, p in enumerate(prompts)}}
    spec = {**engine_check.CASES["soak_serve"], "seconds": 1.5, "sample_every": 0.2}

    def run(path: Path | None = FAKE, **env: str):
        environ = {**os.environ, **env,
                   "PYTHONPATH": os.pathsep.join(str(p) for p in (path, SCRIPTS) if p)}
        return engine_check.run_soak("/model", spec, environ, tmp_path / "serve.log",
                                     timeout=30, ref=ref)
    return run


def gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_right_server_passes_and_is_gone_afterwards(soak):
    result = soak()
    assert result["answers"] > 10 and result["wrong"] == [] and result["error_count"] == 0
    assert result["alive_at_end"] and result["rss_growth"] is not None
    assert result["counters"] == {"vllm:num_preemptions_total": 0.0}
    assert gone(result["server_pid"])
    rows = [{"pid": 1, "pynccl": 5, "connector": 5, "loads": 2, "findings": []}] * 2
    assert engine_check.soak_problems(result, rows) == []


def test_wrong_answers_from_the_server_fail_the_soak(soak):
    result = soak(FAKE_VLLM_WRONG="1")
    assert result["wrong"] and all(first == 3 for _prompt, first in result["wrong"])
    assert gone(result["server_pid"])


def test_a_server_that_never_comes_up_is_an_error_with_its_log(soak):
    result = soak(FAKE_VLLM_CRASH="1")
    assert result["server_came_up"] is False
    assert "did not come up" in result["error"] and "crashed on start" in result["error"]


def test_no_vllm_to_read_the_tokenizer_with_is_an_error(soak):
    assert soak(path=None)["error"].startswith("could not read the tokenizer")


def test_no_reference_no_soak(tmp_path):
    result = engine_check.run_soak("/m", engine_check.CASES["soak_serve"], {}, tmp_path / "l",
                                   timeout=1, ref=None)
    assert result["error"].startswith("no reference tokens")


def test_soak_seconds_sets_how_long_each_soak_case_loads(tmp_path, monkeypatch):
    seen = []

    def fake_run_soak(model, spec, env, log, timeout, ref):
        seen.append(spec["seconds"])
        return {"case": "soak", "error": "not run here"}

    monkeypatch.setattr(engine_check, "run_soak", fake_run_soak)
    monkeypatch.setattr(engine_check.time, "sleep", lambda _s: None)
    monkeypatch.setattr("sys.argv", ["engine_check.py", "/model", "soak_serve_none",
                                     "--out", str(tmp_path), "--soak-seconds", "42"])
    assert engine_check.main() == 1  # the fake run is an error: the case fails, honestly
    assert seen == [42.0]
    assert engine_check.CASES["soak_serve_none"]["seconds"] == 180  # the table is untouched


def test_soak_seconds_must_be_positive(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["engine_check.py", "/model", "soak_serve_none",
                                     "--out", str(tmp_path), "--soak-seconds", "0"])
    with pytest.raises(SystemExit):
        engine_check.main()
    assert "--soak-seconds must be positive" in capsys.readouterr().err


def test_explain_splits_sweeps_connector_soaks_only_and_its_problem_is_the_cases(
        tmp_path, monkeypatch):
    """``--explain-splits`` asks for the sweep after a soak with a connector (never after its
    control), with ``--split-seconds``; a sweep that did not finish fails the case. The soak's
    result is on disk before the sweep starts (a run cut short during it keeps its soak)."""
    recorded = HERE / "recorded" / "f32_soak"
    soak_result = {**engine_check.json.loads(
        (recorded / "soak1_serve_f32.json").read_text())["result"]}
    calls = []

    def fake_explain(model, spec, result, control, env, out, per_prompt):
        calls.append((spec["connector"], out.name, per_prompt, control["answers"]))
        kept = engine_check.json.loads((out.parent / "soak1_serve_f32.json").read_text())
        assert kept["problems"] == ["the split sweep did not finish"]
        assert kept["result"]["answers"] == soak_result["answers"]
        return control, "the split sweep of prompts [5, 12] failed (exit 1): stub"

    monkeypatch.setattr(engine_check, "explain_by_splits", fake_explain)
    monkeypatch.setattr(engine_check, "run_soak", lambda *args: dict(soak_result))
    monkeypatch.setattr(engine_check.time, "sleep", lambda _s: None)
    cases = ["soak1_serve_f32", "soak1_serve_none_f32"]
    argv = ["engine_check.py", "/model", *cases, "--out", str(tmp_path), "--ref-from",
            str(recorded), "--split-seconds", "99"]
    monkeypatch.setattr("sys.argv", [*argv, "--explain-splits"])
    assert engine_check.main() == 1
    assert calls == [("sc", "soak1_serve_f32-splits", 99.0, 1092)]  # the recorded control
    problems = engine_check.json.loads((tmp_path / "soak1_serve_f32.json").read_text())[
        "problems"]
    assert "the split sweep of prompts [5, 12] failed (exit 1): stub" in problems
    calls.clear()
    monkeypatch.setattr("sys.argv", argv)  # not asked for: no sweep
    engine_check.main()
    assert calls == []


def test_soak_from_judges_and_explains_an_earlier_soak_without_running_it(tmp_path, monkeypatch):
    """``--soak-from``: the recorded soak is read, not run; its answers go to the sweep and its
    audit into the verdict; a soak case not in that directory runs as usual."""
    recorded = HERE / "recorded" / "f32_soak"
    seen = []

    def fake_explain(model, spec, result, control, env, out, per_prompt):
        seen.append(("explain", result.get("answers")))
        return control, None

    def fake_run_soak(model, spec, env, log, timeout, ref):
        seen.append(("run", spec["connector"]))
        return {"case": "soak", "error": "not run here"}

    monkeypatch.setattr(engine_check, "explain_by_splits", fake_explain)
    monkeypatch.setattr(engine_check, "run_soak", fake_run_soak)
    monkeypatch.setattr(engine_check.time, "sleep", lambda _s: None)
    monkeypatch.setattr("sys.argv", [
        "engine_check.py", "/model", "soak1_serve_f32", "soak1_serve_off", "--out",
        str(tmp_path), "--ref-from", str(recorded), "--soak-from", str(recorded),
        "--explain-splits"])
    engine_check.main()
    recorded_soak = engine_check.json.loads((recorded / "soak1_serve_f32.json").read_text())
    assert seen == [("explain", recorded_soak["result"]["answers"]), ("run", "sc"),
                    ("explain", None)]  # the soak that ran (and failed) here
    judged = engine_check.json.loads((tmp_path / "soak1_serve_f32.json").read_text())
    assert judged["audit"] == recorded_soak["audit"]
    assert judged["result"]["answers"] == recorded_soak["result"]["answers"]


def test_soak_from_must_be_a_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["engine_check.py", "/model", "soak_serve", "--out",
                                     str(tmp_path), "--soak-from", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit):
        engine_check.main()
    assert "--soak-from" in capsys.readouterr().err


def test_a_soak_from_file_that_is_not_a_result_is_a_clear_error(tmp_path, monkeypatch, capsys):
    for text in ("{not json", '{"result": {}}'):
        (tmp_path / "soak_serve.json").write_text(text)
        monkeypatch.setattr("sys.argv", ["engine_check.py", "/model", "soak_serve", "--out",
                                         str(tmp_path / "out"), "--soak-from", str(tmp_path)])
        with pytest.raises(SystemExit):
            engine_check.main()
        err = capsys.readouterr().err
        assert "--soak-from:" in err and "soak_serve.json" in err
