"""The audit reaches real engine code however it is turned on, in any import order (CPU).

Each case starts a fresh interpreter with a prepared vLLM tree, turns the audit on one way
(``install()``, ``STREAMCHECK`` + start-up hook, vLLM's ``general_plugins`` entry point, a
spawned child, ``pytest --streamcheck`` with and without xdist), and only then imports vLLM's
``PyNcclCommunicator``, two SGLang-shaped communicators and a connector subclass
(``tests/vllm/late``). The leaks are driven through the engines' own methods; nothing calls
``instrument_vllm()`` or ``streamcheck.launch``. In ``assert`` mode every leaking launch must be
stopped before it reaches NCCL, and the clean ones must pass and be counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamcheck.activation import child_env
from tests.vllm.conftest import run_in_vllm

VERSIONS = ["0.9.2", "0.33.0"]

DRIVER = """
from tests.vllm.late import leak_driver as d
d.fake_cuda_first()
{between}
emit(d.run_all())
"""

LEAKY = {"module-global": ("cross_thread", "error400"),
         "thread-local-new-stream": ("error400", "stale")}


def rules_by_method(form: dict[str, Any]) -> dict[str, list[str]]:
    return {m: rules for m, rules in form.items() if m != "nccl_calls"}


def check_pynccl(out: dict[str, Any]) -> None:
    forms = out["pynccl"]
    methods = forms["methods"]
    assert {"all_reduce", "all_gather", "reduce_scatter", "send", "recv", "broadcast"} <= set(
        methods)
    assert rules_by_method(forms["clean"]) == {m: [] for m in methods}
    assert forms["clean"]["nccl_calls"] > 0  # the clean launches ran on
    for name in LEAKY[forms["cache"]]:
        form = forms[name]
        assert form["nccl_calls"] == 0, f"{name}: a leaking launch reached NCCL"
        expected = {"cross_thread": "foreign-stream", "error400": "device-mismatch",
                    "stale": "stale-stream-cache"}[name]
        missed = [m for m, rules in rules_by_method(form).items() if expected not in rules]
        assert missed == [], f"{name}: {expected} not reported for {missed}"
    if forms["cache"] != "module-global":  # the thread-local cache does not leak across
        assert rules_by_method(forms["cross_thread"]) == {m: [] for m in methods}
    targets, counts = out["targets"], out["launches_by_op"]
    assert targets["vllm.pynccl"]["state"] == "instrumented"
    assert set(methods) <= set(targets["vllm.pynccl"]["methods"])
    assert all(counts[f"vllm.pynccl.{m}"] >= 3 for m in methods)


def check_sglang_and_connector(out: dict[str, Any]) -> None:
    sg = out["sglang"]
    assert rules_by_method(sg["mmgen_clean"]) == {"all_reduce": [], "send": []}
    assert rules_by_method(sg["mmgen_cross_thread"]) == {
        "all_reduce": ["foreign-stream"], "send": ["foreign-stream"]}
    assert rules_by_method(sg["srt_clean"]) == {"all_reduce": [], "broadcast": []}
    assert all("device-mismatch" in r for r in rules_by_method(sg["srt_cached_device"]).values())
    assert sg["launches_reached"] == 4  # only the clean ones ran on
    conn = out["connector"]
    assert conn["engine_thread"] == []
    assert conn["helper_on_default_stream"] == ["default-stream-in-worker"]
    assert conn["calls"] == ["save_kv_layer"]  # the helper's launch was stopped
    targets, counts = out["targets"], out["launches_by_op"]
    for name in ("sglang.pynccl", "sglang.multimodal_gen.pynccl", "vllm.kv_connector"):
        assert targets[name]["state"] == "instrumented", name
    assert "LateConnector.save_kv_layer" in targets["vllm.kv_connector"]["methods"]
    assert counts["connector.LateConnector.save_kv_layer"] == 2
    assert counts["sglang.pynccl.all_reduce"] == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_install_first_then_import(version: str) -> None:
    code = "import streamcheck\nstreamcheck.install('assert')\n" + DRIVER.format(between="")
    out = run_in_vllm(version, code)
    check_pynccl(out)
    check_sglang_and_connector(out)


@pytest.mark.parametrize("version", VERSIONS)
def test_env_start_up_hook(version: str, tmp_path: Path) -> None:
    env = child_env("assert", tmp_path / "reports", base={})
    code = ("import sys\nassert 'torch' not in sys.modules\n"
            + DRIVER.format(between=""))
    out = run_in_vllm(version, code, env_overlay=env)
    check_pynccl(out)
    check_sglang_and_connector(out)
    [report] = [json.loads(p.read_text()) for p in (tmp_path / "reports").glob("*.json")]
    assert report["final"] is True and report["mode"] == "assert"
    assert report["launches_audited"] == sum(out["launches_by_op"].values())
    assert {f["launch"]["op"] for f in report["findings"]} >= {"vllm.pynccl.all_reduce"}


@pytest.mark.parametrize("version", VERSIONS)
def test_vllm_general_plugins_entry_point(version: str) -> None:
    """``STREAMCHECK`` set, no start-up hook: vLLM's own plugin loading starts the audit."""
    between = ("import streamcheck\nassert streamcheck.current_auditor() is None\n"
               "from vllm.plugins import load_general_plugins\nload_general_plugins()\n"
               "assert streamcheck.current_auditor() is not None, 'plugin did not load'\n")
    out = run_in_vllm(version, DRIVER.format(between=between),
                      env_overlay={"STREAMCHECK": "assert"})
    check_pynccl(out)
    check_sglang_and_connector(out)


@pytest.mark.parametrize("version", VERSIONS)
def test_spawned_child_leaves_its_report_without_atexit(version: str, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    code = ("import multiprocessing as mp\nfrom tests.vllm.late import leak_driver as d\n"
            "p = mp.get_context('spawn').Process(target=d.spawned_main)\n"
            "p.start(); p.join(120)\nemit({'exitcode': p.exitcode})\n")
    out = run_in_vllm(version, code, env_overlay=child_env("assert", reports, base={}))
    assert out == {"exitcode": 0}
    [report] = [json.loads(p.read_text()) for p in reports.glob("*.json")]  # the child's only
    assert report["final"] is False  # it never reached atexit; the report was kept as it went
    rules = {(f["rule"], f["launch"]["op"]) for f in report["findings"]}
    expected = "foreign-stream" if version == "0.9.2" else "stale-stream-cache"
    assert (expected, "vllm.pynccl.all_reduce") in rules
    assert ("default-stream-in-worker", "connector.LateConnector.save_kv_layer") in rules
    targets = {t["name"]: t for t in report["targets"]}
    assert targets["vllm.pynccl"]["state"] == "instrumented"
    assert targets["vllm.pynccl"]["launches"] > 0


INNER_TEST = '''
from tests.vllm.late import leak_driver as d

def test_{name}():
    d.fake_cuda_first()
    d.{forms}()
'''


@pytest.mark.parametrize("workers", [0, 2])
def test_pytest_plugin_in_process_and_under_xdist(workers: int, tmp_path: Path) -> None:
    (tmp_path / "test_pynccl.py").write_text(INNER_TEST.format(name="pynccl",
                                                               forms="pynccl_forms"))
    (tmp_path / "test_rest.py").write_text(INNER_TEST.format(name="rest",
                                                             forms="sglang_forms"))
    report_path = tmp_path / "session.json"
    args = ["-q", "-p", "no:cacheprovider", "--streamcheck=assert",
            f"--streamcheck-report={report_path}", "--rootdir", str(tmp_path), str(tmp_path)]
    if workers:
        args += ["-p", "xdist", "-n", str(workers), "--dist", "loadfile"]
    code = f"import pytest\nemit({{'rc': int(pytest.main({args!r}))}})\n"
    out = run_in_vllm("0.9.2", code)
    assert out["rc"] == 1  # both tests fail: each produced findings
    report = json.loads(report_path.read_text())
    found = {nodeid.split("::")[1]: {(f["rule"], f["launch"]["op"]) for f in fs}
             for nodeid, fs in report["tests"].items()}
    assert ("foreign-stream", "vllm.pynccl.all_reduce") in found["test_pynccl"]
    assert ("device-mismatch", "vllm.pynccl.broadcast") in found["test_pynccl"]
    assert ("foreign-stream", "sglang.multimodal_gen.pynccl.send") in found["test_rest"]
    assert report["launches_audited"] > 0
    targets = {t["name"]: t for t in report["targets"]}
    assert targets["vllm.pynccl"]["state"] == "instrumented"
    assert targets["vllm.pynccl"]["launches"] > 0
    if workers:
        assert report["processes"] == workers
