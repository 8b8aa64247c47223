"""The engine under vLLM's default compilation and CUDA graphs after the forward's waits for
loads moved to ``start_load_kv``, recorded on one H200 (2026-12-01, ninth session,
``docs/measurements.md``, tables T9 and G9; the connector's timelines left out).

What the runs say, and the docs repeat: with sync loads (the load on the engine's stream ahead
of the forward, no engine step between the lookup and the forward) the host store's warm TTFT
is under vLLM's best connector and under recomputing in every call that ran them; the async
load's forward varies by 2.5 ms between engines of one call, whichever the audit setting;
faults with preemption and batch-invariant sync loads give no wrong output; a float32 server
with sync loads under 6 clients gives only answers a server without a connector gives."""

from __future__ import annotations

import pytest

from tests.scripts.script_modules import load_script, recorded_result
from tests.scripts.test_recorded_ttft_graphs import (
    checked_f32_soak,
    checked_faulty_run,
    default_graphs_ttft_table,
)

engine_check = load_script("engine_check")

CALLS = {"c2": ("offloading", "sc_host", "sc_host_sync"),
         "c5": ("offloading", "recompute", "sc_host_sync"),
         "c6": ("sc_host", "sc_host_off", "sc_host_quiet"),
         "c7": ("offloading", "recompute", "sc_host_sync", "simple_cpu")}
PEERS = ("offloading", "simple_cpu")


def ttft(call: str, name: str) -> dict:
    return recorded_result(f"ttft_graphs9/{call}", f"ttft_graphs_{name}")


def test_the_warm_ttft_table_every_engine_on_vllms_default_graphs():
    assert default_graphs_ttft_table("ttft_graphs9", CALLS) == {
        ("c2", "offloading"): 16.34, ("c2", "sc_host"): 20.66, ("c2", "sc_host_sync"): 14.9,
        ("c5", "offloading"): 17.45, ("c5", "recompute"): 14.74, ("c5", "sc_host_sync"): 12.43,
        ("c6", "sc_host"): 18.2, ("c6", "sc_host_off"): 20.68, ("c6", "sc_host_quiet"): 22.56,
        ("c7", "offloading"): 15.72, ("c7", "recompute"): 17.15, ("c7", "sc_host_sync"): 12.34,
        ("c7", "simple_cpu"): 19.89}


@pytest.mark.parametrize("call", ["c2", "c5", "c7"])
def test_sync_loads_are_under_the_best_vllm_connector_and_recomputing_in_each_call(call):
    ours = ttft(call, "sc_host_sync")
    others = {name: ttft(call, name)["ttft_warm_median_ms"] for name in CALLS[call]
              if name in (*PEERS, "recompute")}
    assert ours["ttft_warm_median_ms"] < min(others.values())
    steps = ours["steps"]["median"]
    assert steps["loads_reported"] is None  # no step waits for a load to be reported
    peer = ttft(call, "offloading")["steps"]["median"]
    assert steps["to_forward"] < peer["to_forward"] - 8  # ...where the async peers spend 10 ms


def test_the_audit_setting_does_not_order_the_async_engines_of_one_call():
    """Trace and ``assert`` (18.20), ``assert`` (22.56), off (20.68): the forward after the load
    set the order (3.6, 6.1, 5.4 ms), not the connector's audit or trace."""
    forwards = {name: ttft("c6", name)["steps"]["median"]["forward"] for name in CALLS["c6"]}
    assert forwards == {"sc_host": 3.625, "sc_host_off": 5.441, "sc_host_quiet": 6.095}
    assert sorted(CALLS["c6"], key=lambda n: ttft("c6", n)["ttft_warm_median_ms"]) == [
        "sc_host", "sc_host_off", "sc_host_quiet"]


def test_batch_invariant_sync_loads_under_vllms_default_graphs_give_recomputings_tokens():
    ours = recorded_result("ttft_graphs9/c6", "inv_graphs_sc_host_sync")
    ref = recorded_result("ttft_graphs/c3", "inv_graphs_recompute")
    assert ours["cudagraph_mode"] == "FULL_AND_PIECEWISE"
    assert engine_check.verdict("inv_graphs_sc_host_sync", ours, None, ref) == []
    first = ours["tokens"]["warm_batch"]
    wrong = {**ours, "tokens": {"warm_batch": [[*first[0][:-1], first[0][-1] + 1], *first[1:]]}}
    assert engine_check.verdict("inv_graphs_sc_host_sync", wrong, None, ref) == [
        "1 of 8 prompts' tokens differ from recomputing"]


def test_faults_and_preemption_with_the_wait_before_the_forward_give_no_wrong_output():
    engine = checked_faulty_run("ttft_graphs9/c6", "FULL_AND_PIECEWISE", 29, (93, 16, 13))
    assert (engine["loads"], engine["launches"]) == (82, 3153)


def test_a_server_with_sync_loads_gives_only_answers_the_engine_gives_without_a_connector():
    """``soak1_serve_sync_f32`` (call 10, 90 s, 6 clients, float32): no failed request, every
    answer that differs from the offline reference is one the server without a connector gave
    too (its differing answers are the same three prompts'), memory flat after a step."""
    result, engine = checked_f32_soak("ttft_graphs9/c10")
    assert (result["answers"], len(result["wrong"])) == (588, 22)
    counters = result["counters"]
    assert counters["vllm:external_prefix_cache_hits_total"] == 58768
    assert counters["vllm:num_preemptions_total"] == 0
    assert engine["loads"] == 157
    assert result["rss_growth"]["growth"] <= 1
    assert [m["gpu_mib"] for m in result["memory"][5:]] == [6599] * 14  # flat from 25 s
