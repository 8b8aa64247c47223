"""The engine under vLLM's default compilation and CUDA graphs after a block-aligned prompt's
full hit became a one-token step, recorded on one H200 (2026-12-01, tenth session,
``docs/measurements.md``, tables T10 and G10; the connector's timelines left out).

What the runs say, and the docs repeat: loading a 1,792-token prompt's last block too leaves one
token to compute, which vLLM runs from a full CUDA graph, as it does for its own
``OffloadingConnector``; the async load's forward fell to the peer's (1.9-2.7 ms, where 16
tokens run piecewise took 3.6-6.1), its warm TTFT within 0.6 ms of the peer's in each call,
under it with the connector's audit off; sync loads stay under every peer and recomputing;
batch-invariant sync loads give recomputing's tokens; faults with preemption and a float32
server with sync loads give no answer the engine without a connector does not give."""

from __future__ import annotations

import pytest

from tests.scripts.script_modules import load_script, recorded_result
from tests.scripts.test_recorded_ttft_graphs import (
    checked_f32_soak,
    checked_faulty_run,
    default_graphs_ttft_table,
)

engine_check = load_script("engine_check")

CALLS = {"c2": ("offloading", "recompute", "sc_host", "sc_host_sync"),
         "c6": ("offloading", "sc_host", "sc_host_off", "sc_host_sync"),
         "c7": ("offloading", "sc_host_off", "sc_host_quiet")}
ASSERTED = {"c2": "sc_host", "c6": "sc_host", "c7": "sc_host_quiet"}  # async, `assert` on


def ttft(call: str, name: str) -> dict:
    return recorded_result(f"ttft_graphs10/{call}", f"ttft_graphs_{name}")


def test_the_warm_ttft_table_every_engine_on_vllms_default_graphs():
    assert default_graphs_ttft_table("ttft_graphs10", CALLS) == {
        ("c2", "offloading"): 17.38, ("c2", "recompute"): 14.6, ("c2", "sc_host"): 17.5,
        ("c2", "sc_host_sync"): 12.89,
        ("c6", "offloading"): 18.76, ("c6", "sc_host"): 19.29, ("c6", "sc_host_off"): 17.58,
        ("c6", "sc_host_sync"): 13.3,
        ("c7", "offloading"): 20.2, ("c7", "sc_host_off"): 18.1, ("c7", "sc_host_quiet"): 20.18}


def _forward_step_tokens(result: dict) -> list[int]:
    """Tokens of each warm request's first step that computed any (its forward)."""
    return [next(step[2] for step in request["steps"] if step[2])
            for request in result["steps"]["requests"]]


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_loaded_prompt_computes_one_token_as_the_peer_does(call):
    """Every warm request of ours computes one token after its load, like vLLM's connector;
    recomputing computes the whole prompt."""
    for name in CALLS[call]:
        tokens = set(_forward_step_tokens(ttft(call, name)))
        assert tokens == ({1792} if name == "recompute" else {1}), (call, name)


def test_the_async_forward_is_the_peers_now_where_sixteen_tokens_took_twice_as_long():
    """The forward after an async load (a full graph's replay) within 0.4 ms of the peer's in
    each call, against 3.6-6.1 ms (and the peer's 1.6-2.1) when 16 tokens ran piecewise."""
    for call in CALLS:
        ours = ttft(call, ASSERTED[call])["steps"]["median"]["forward"]
        peer = ttft(call, "offloading")["steps"]["median"]["forward"]
        assert abs(ours - peer) < 0.4 and ours < 3.0, call
    before = recorded_result("ttft_graphs9/c6", "ttft_graphs_sc_host_quiet")
    assert before["steps"]["median"]["forward"] > 6.0
    assert set(_forward_step_tokens(before)) == {16}


def test_async_loads_are_at_the_peer_with_the_audit_and_under_it_without():
    for call in CALLS:
        peer = ttft(call, "offloading")["ttft_warm_median_ms"]
        ours = ttft(call, ASSERTED[call])["ttft_warm_median_ms"]
        assert abs(ours - peer) <= 0.6, call
        if "sc_host_off" in CALLS[call]:
            assert ttft(call, "sc_host_off")["ttft_warm_median_ms"] < peer - 1.0, call


@pytest.mark.parametrize("call", ["c2", "c6"])
def test_sync_loads_are_under_the_peer_and_recomputing(call):
    ours = ttft(call, "sc_host_sync")["ttft_warm_median_ms"]
    others = [ttft(call, name)["ttft_warm_median_ms"] for name in CALLS[call]
              if name in ("offloading", "recompute")]
    assert ours < min(others) - 1.0


def test_batch_invariant_sync_loads_with_a_one_token_step_give_recomputings_tokens():
    ours = recorded_result("ttft_graphs10/c2", "inv_graphs_sc_host_sync")
    ref = recorded_result("ttft_graphs/c3", "inv_graphs_recompute")
    assert ours["cudagraph_mode"] == "FULL_AND_PIECEWISE"
    assert engine_check.verdict("inv_graphs_sc_host_sync", ours, None, ref) == []


def test_faults_and_preemption_with_full_prompt_loads_give_no_wrong_output():
    engine = checked_faulty_run("ttft_graphs10/c3", "FULL_AND_PIECEWISE", 28, (93, 17, 13))
    assert (engine["loads"], engine["launches"]) == (93, 3777)


def test_a_server_with_sync_loads_still_gives_only_answers_the_engine_gives_alone():
    """``soak1_serve_sync_f32`` (call 3, 90 s, 6 clients, float32) after the change: no failed
    request, every answer that differs from the offline reference one the server without a
    connector gave too (the same three prompts'), memory flat after a step."""
    result, engine = checked_f32_soak("ttft_graphs10/c3")
    assert (result["answers"], len(result["wrong"])) == (534, 18)
    assert result["counters"]["vllm:external_prefix_cache_hits_total"] == 56333
    assert (engine["loads"], engine["launches"]) == (161, 145146)
    assert result["rss_growth"]["growth"] == 0
    assert max(m["gpu_mib"] for m in result["memory"][6:]) - result["memory"][6]["gpu_mib"] <= 2
