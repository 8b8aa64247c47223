"""``engine_check.case_ttft`` on a stand-in engine: the warm pass's rounds, its windows and the
engine-step trace it asks of the engine's process (here, this one)."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace
from typing import Any

from tests.scripts.script_modules import load_script

engine_check = load_script("engine_check")
engine_steps = engine_check.engine_steps


class FakeRunner:
    def execute_model(self, scheduler_output: Any) -> None:
        return None

    def sample_tokens(self, grammar: Any) -> str:
        return "sampled"


class FakeLLM:
    """What case_ttft asks of vLLM's ``LLM``: a tokenizer, ``collective_rpc`` (run here, on
    one worker) and the metrics; ``generate`` is the module's, replaced below."""

    def __init__(self) -> None:
        self.worker = SimpleNamespace(model_runner=FakeRunner())

    def get_tokenizer(self) -> Any:
        return SimpleNamespace(vocab_size=64)

    def collective_rpc(self, fn: Any) -> list[Any]:
        return [fn(self.worker)]

    def get_metrics(self) -> list[Any]:
        return []


def test_the_warm_pass_asks_for_each_prompt_each_round_and_traces_every_request(monkeypatch):
    llm = FakeLLM()
    asked: list[tuple[int, int]] = []

    def generate(engine: Any, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        asked.append((len(prompts), max_tokens))
        if len(prompts) == 1 and max_tokens == 1:  # a warm request: its forward
            engine.worker.model_runner.execute_model(SimpleNamespace(
                total_num_scheduled_tokens=16))
            time.sleep(0.001)
        return [[1] * max_tokens for _ in prompts]

    monkeypatch.setattr(engine_check, "make_llm", lambda *a, **k: llm)
    monkeypatch.setattr(engine_check, "generate", generate)
    monkeypatch.setattr(engine_check.time, "sleep", lambda s: None)
    monkeypatch.setattr(engine_steps, "_schedulers", list)  # no scheduler in this process
    monkeypatch.setattr(engine_steps, "_connector", lambda: None)
    registered: list[Any] = []  # vLLM's cloudpickle, which this machine need not have
    monkeypatch.setitem(sys.modules, "cloudpickle",
                        SimpleNamespace(register_pickle_by_value=registered.append))
    result = engine_check.case_ttft("model", "sc", {}, {}, prompt_tokens=32, steps=True,
                                    warm_rounds=2)
    assert len(result["ttft_ms"]["warm"]) == 16 and len(result["cold_ms"]) == 8
    assert asked.count((1, 1)) == 16 and asked.count((1, engine_check.COLD_TOKENS)) == 8
    steps = result["steps"]
    assert steps["schedulers_traced"] == 0 and len(steps["requests"]) == 16
    # each warm request's window holds its own forward, and only it
    assert all(row["forward"] is not None and row["schedules"] is None
               for row in steps["requests"])
    assert not hasattr(llm.worker, "_engine_steps")  # the trace stopped after the warm pass
    assert registered == [engine_steps]  # sent to the engine's process by value


def test_engines_are_eager_unless_a_case_asks_for_graphs_and_say_which_mode_they_run(
        monkeypatch):
    built: list[dict[str, Any]] = []

    def LLM(**kw: Any) -> Any:
        built.append(kw)
        mode = "NONE" if kw["enforce_eager"] else "PIECEWISE"
        return SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(
            compilation_config=SimpleNamespace(cudagraph_mode=SimpleNamespace(name=mode)))))

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=LLM))
    monkeypatch.setattr(engine_check, "kv_config", lambda name, extra: None)
    eager = engine_check.make_llm("m", 1, "none", {})
    spec = engine_check.CASES["ttft_graphs_sc_host"]
    graphs = engine_check.make_llm("m", 1, spec["connector"], spec["extra"], **spec["llm"])
    assert [kw["enforce_eager"] for kw in built] == [True, False]
    assert built[1]["compilation_config"] == engine_check.GRAPHS["compilation_config"]
    assert built[1]["enable_prefix_caching"] is True  # the ttft_pc setting kept
    assert (engine_check.graph_mode(eager), engine_check.graph_mode(graphs)) == (
        "NONE", "PIECEWISE")
    assert engine_check.graph_mode(object()).startswith("unknown")
    assert engine_check.CASES["inv_graphs_sc_host"]["ref"] == "inv_graphs_recompute"
    assert engine_check.CASES["faulty_tp1_graphs"]["ref"] == "ref_tp1_graphs"
