"""The engine under vLLM's default compilation and CUDA graphs, recorded on one H200 (2026-12-01,
eighth session, ``docs/measurements.md``, tables T8 and G8; the connector's timelines left out).

What the runs say, and the docs repeat: the connector's loads give recomputing's tokens exactly
under graphs with batch-invariant kernels, and faults with preemption leave no output the
engine without a connector never gave, under piecewise graphs (call 7, when the connector asked
for them) and under vLLM's default (call 9, once its saves were queued after the forward). The
warm TTFT is not at or under vLLM's best: up to the forward ours takes what theirs take, the
forward after the load is longer."""

from __future__ import annotations

from collections.abc import Container
from functools import partial

import pytest

from tests.scripts.script_modules import load_script, recorded_result

engine_check = load_script("engine_check")

CALLS = {"c2": ("recompute", "sc_host"), "c3": ("simple_cpu", "offloading"),
         "c4": ("sc_host_off", "sc_host"), "c7": ("sc_host", "offloading"),
         "c9": ("sc_host", "offloading"), "c10": ("simple_cpu", "sc_host")}


def ttft(call: str, name: str) -> dict:
    return recorded_result(f"ttft_graphs/{call}", f"ttft_graphs_{name}")


def default_graphs_ttft_table(folder: str, calls: dict[str, tuple[str, ...]]
                              ) -> dict[tuple[str, str], float]:
    """The warm TTFT of each recorded ``ttft_graphs_<name>`` case of ``folder``/``call``,
    after checking that every engine ran vLLM's default graphs."""
    results = {(call, name): recorded_result(f"{folder}/{call}", f"ttft_graphs_{name}")
               for call, names in calls.items() for name in names}
    assert {r["cudagraph_mode"] for r in results.values()} == {"FULL_AND_PIECEWISE"}
    return {key: r["ttft_warm_median_ms"] for key, r in results.items()}


def connector_worker_rows(folder: str, call: str) -> list[dict]:
    """The connector workers the audited case's report (``sc_host_quiet``) lists in ``call``
    (a later call's engines write their reports beside an earlier call's on the same machine,
    so both are listed), after checking that no process of it found anything and that the
    unaudited case (``sc_host_off``) carries no audit at all."""
    rows = recorded_result(f"{folder}/{call}", "ttft_graphs_sc_host_quiet", "audit")["rows"]
    assert all(row["findings"] == [] for row in rows), call
    assert recorded_result(f"{folder}/{call}", "ttft_graphs_sc_host_off", "audit") is None
    return [row for row in rows if row["connector"]]


def audited_worker_rows(folder: str, calls: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    """Each call's one audited worker (:func:`connector_worker_rows`)."""
    workers = {}
    for call in calls:
        (workers[call],) = connector_worker_rows(folder, call)
    return workers


def ttft_added(folder: str, calls: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """Each pair's warm TTFT median, audited (``sc_host_quiet``) minus unaudited
    (``sc_host_off``), in ms."""
    table = default_graphs_ttft_table(folder, calls)
    return {call: round(table[call, "sc_host_quiet"] - table[call, "sc_host_off"], 2)
            for call in calls}


def check_audited_workers(folder: str, calls: dict[str, tuple[str, ...]],
                          loads: Container[int]) -> None:
    """Each audited worker as last written (a periodic write): every connector launch it had
    seen audited, no final write yet, its loads among ``loads``."""
    for call in calls:
        (worker,) = connector_worker_rows(folder, call)
        assert worker["launches"] == worker["connector"] > 0 and not worker["final"]
        assert worker["loads"] in loads, call


def only_worker(folder: str, call: str, name: str) -> dict:
    """The one connector worker's stats of a recorded ``ttft_graphs_<name>`` case."""
    (worker,) = recorded_result(f"{folder}/{call}", f"ttft_graphs_{name}")["stats"]["workers"]
    return worker


def load_issue_added(folder: str, calls: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """Each call's mean time to issue a load, audited minus unaudited (ms), after checking
    that every one of the 28 loads completed and none was stopped in either case."""
    added = {}
    for call in calls:
        audited, off = (only_worker(folder, call, name) for name in ("sc_host_quiet",
                                                                      "sc_host_off"))
        added[call] = round(audited["load_issue_ms"] - off["load_issue_ms"], 2)
        for worker in (audited, off):
            assert (worker["slab_loads"], worker["failed_loads"], worker["hazards_stopped"]) == (
                28, 0, 0), call
    return added


def test_the_warm_ttft_table_and_the_graph_mode_each_engine_ran():
    table = {(call, name): (ttft(call, name)["ttft_warm_median_ms"],
                            ttft(call, name)["cudagraph_mode"])
             for call, names in CALLS.items() for name in names}
    piecewise, default = "PIECEWISE", "FULL_AND_PIECEWISE"
    assert table == {
        ("c2", "recompute"): (15.16, default), ("c2", "sc_host"): (27.57, piecewise),
        ("c3", "simple_cpu"): (24.41, default), ("c3", "offloading"): (20.93, default),
        ("c4", "sc_host_off"): (23.94, piecewise), ("c4", "sc_host"): (20.72, piecewise),
        ("c7", "sc_host"): (21.10, piecewise), ("c7", "offloading"): (16.31, default),
        ("c9", "sc_host"): (21.29, default), ("c9", "offloading"): (17.52, default),
        ("c10", "simple_cpu"): (19.05, default), ("c10", "sc_host"): (19.17, default)}


@pytest.mark.parametrize("call", ["c7", "c9", "c10"])
def test_up_to_the_forward_the_same_then_a_longer_forward(call):
    ours, (peer,) = ttft(call, "sc_host"), set(CALLS[call]) - {"sc_host"}
    theirs = ttft(call, peer)
    mine, other = ours["steps"]["median"], theirs["steps"]["median"]
    assert abs(mine["to_forward"] - other["to_forward"]) <= 0.5
    assert mine["forward"] > other["forward"]
    assert ours["ttft_warm_median_ms"] > theirs["ttft_warm_median_ms"]  # not met, each call


def test_the_warm_batch_ran_at_vllms_pace_once_the_saves_left_attention():
    batch = {(call, name): ttft(call, name)["batch_tokens_per_s"]
             for call, names in CALLS.items() for name in names}
    piecewise_ours = [batch[c, n] for c, n in batch if n.startswith("sc_host")
                      and c in ("c2", "c4", "c7")]
    assert max(piecewise_ours) < 400 < 675 < min(batch[c, n] for c, n in batch
                                                 if n in ("simple_cpu", "offloading"))
    assert (batch["c9", "sc_host"], batch["c10", "sc_host"]) == (720.7, 848.1)


def test_batch_invariant_loads_under_graphs_give_recomputings_tokens():
    call = partial(recorded_result, "ttft_graphs/c3")
    ours, ref = call("inv_graphs_sc_host"), call("inv_graphs_recompute")
    assert ours["cudagraph_mode"] == "PIECEWISE"
    assert engine_check.verdict("inv_graphs_sc_host", ours, None, ref) == []
    wrong = {**ours, "tokens": {"warm_batch": [[t + 1 for t in ours["tokens"]["warm_batch"][0]],
                                               *ours["tokens"]["warm_batch"][1:]]}}
    assert engine_check.verdict("inv_graphs_sc_host", wrong, None, ref) == [
        "1 of 8 prompts' tokens differ from recomputing"]


def checked_faulty_run(folder: str, mode: str, preemptions: int, loads: tuple[int, int, int]
                       ) -> dict:
    """A recorded ``faulty_tp1_graphs`` run's checks (the graph mode, preemptions, loads
    failed and faults injected, the verdict against ``ref_tp1_graphs``, which a changed token
    fails); returns the connector's engine row of its audit."""
    result = recorded_result(folder, "faulty_tp1_graphs")
    audit = recorded_result(folder, "faulty_tp1_graphs", "audit")
    ref = recorded_result("ttft_graphs/c7", "ref_tp1_graphs")
    assert result["cudagraph_mode"] == mode and ref["cudagraph_mode"] == "FULL_AND_PIECEWISE"
    (worker,) = result["stats"]["workers"]
    assert (worker["slab_loads"], worker["failed_loads"], worker["faults_injected"]) == loads
    assert result["engine"]["vllm:num_preemptions"] == preemptions
    assert engine_check.verdict("faulty_tp1_graphs", result, audit, ref) == []
    first = next(iter(result["tokens"]))
    changed = [[*result["tokens"][first][0][:-1], -1], *result["tokens"][first][1:]]
    wrong = {**result, "tokens": {**result["tokens"], first: changed}}
    assert engine_check.verdict("faulty_tp1_graphs", wrong, audit, ref) != []
    (engine,) = [row for row in audit["rows"] if row["connector"]]
    assert engine["findings"] == []
    return engine


def checked_f32_soak(folder: str, case: str = "soak1_serve_sync_f32") -> tuple[dict, dict]:
    """A recorded float32 soak's checks (no failed request; its verdict against the offline
    reference with the no-connector server as control, which an answer that server never gave
    fails; every answer that differs from the reference one that server gave, of prompts 0, 7
    and 22; no finding); returns its result and the connector's engine row of its audit."""
    result = recorded_result(folder, case)
    audit = recorded_result(folder, case, "audit")
    ref = recorded_result("f32_soak", "ref_tp1_f32")
    control = recorded_result("f32_soak", "soak1_serve_none_f32")
    assert engine_check.verdict(case, result, audit, ref, control=control) == []
    assert result["error_count"] == 0
    assert {prompt for prompt, _token in result["wrong"]} == {0, 7, 22}
    assert engine_check.novel_variants(result, control) == []
    (engine,) = [row for row in audit["rows"] if row["connector"]]
    assert engine["findings"] == []
    # an answer no server without a connector gave would fail it
    novel = {**result, "variants": [[5, [1, 2, 3], 1], *result["variants"]]}
    assert engine_check.novel_variants(novel, control) == [(5, [1, 2, 3], 1)]
    assert engine_check.verdict(case, novel, audit, ref, control=control) != []
    return result, engine


@pytest.mark.parametrize(("call", "mode", "preemptions", "loads"), [
    ("c7", "PIECEWISE", 29, (93, 16, 13)), ("c9", "FULL_AND_PIECEWISE", 38, (101, 16, 14))])
def test_faults_and_preemption_under_graphs_give_no_output_the_reference_never_gave(
        call, mode, preemptions, loads):
    engine = checked_faulty_run(f"ttft_graphs/{call}", mode, preemptions, loads)
    assert engine["loads"] > 0
