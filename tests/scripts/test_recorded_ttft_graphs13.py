"""The reference connector's async loads with ``assert`` on and off, with 203e047's compiled
hooks (the event hooks' stream-key cache holding its streams by strong references), recorded on
one H200 in two calls on one machine (2026-12-02, thirteenth session, ``docs/measurements.md``,
table G13; call 4 ran the audited case first, call 5 the unaudited one).

What the runs say, and the docs repeat: the new hooks run in the engine (every connector launch
audited, 28 loads, no finding, no hazard stopped), and on this machine the audit's cost shows in
the warm TTFT, +1.0 and +3.1 ms, part of it in the load's issue (+0.5 and +1.1 ms), where the
eleventh session's calls (G11) saw none."""

from __future__ import annotations

from tests.scripts.script_modules import recorded_result
from tests.scripts.test_recorded_ttft_graphs import default_graphs_ttft_table

CALLS = {"c4": ("sc_host_quiet", "sc_host_off"), "c5": ("sc_host_off", "sc_host_quiet")}


def _worker(call: str, name: str) -> dict:
    (worker,) = recorded_result(f"ttft_graphs13/{call}", f"ttft_graphs_{name}")["stats"][
        "workers"]
    return worker


def test_the_warm_ttft_table_every_engine_on_vllms_default_graphs():
    assert default_graphs_ttft_table("ttft_graphs13", CALLS) == {
        ("c4", "sc_host_quiet"): 19.92, ("c4", "sc_host_off"): 16.81,
        ("c5", "sc_host_off"): 16.59, ("c5", "sc_host_quiet"): 17.56}


def test_the_audit_ran_in_the_engine_and_found_nothing():
    """Each audited engine's worker process reports every connector launch audited; the
    unaudited cases carry no audit at all."""
    launches = {}
    for call in CALLS:
        rows = recorded_result(f"ttft_graphs13/{call}", "ttft_graphs_sc_host_quiet", "audit")[
            "rows"]
        assert all(row["findings"] == [] for row in rows), call
        (worker,) = [row for row in rows if row["connector"]]
        assert worker["launches"] == worker["connector"], call
        launches[call] = (worker["connector"], worker["loads"])
        assert recorded_result(f"ttft_graphs13/{call}", "ttft_graphs_sc_host_off",
                               "audit") is None, call
    assert launches == {"c4": (1232, 28), "c5": (1194, 28)}


def test_the_loads_issue_is_longer_with_the_audit_in_both_calls():
    """Each worker's mean time to issue a load, audited minus unaudited: 1.06 and 0.52 ms (G11
    measured it within 0.2 ms); every load completed and none was stopped."""
    added = {}
    for call in CALLS:
        audited, off = _worker(call, "sc_host_quiet"), _worker(call, "sc_host_off")
        added[call] = round(audited["load_issue_ms"] - off["load_issue_ms"], 2)
        for worker in (audited, off):
            assert (worker["slab_loads"], worker["failed_loads"], worker["hazards_stopped"]) == (
                28, 0, 0), call
    assert added == {"c4": 1.06, "c5": 0.52}
