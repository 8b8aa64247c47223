"""The reference connector's async loads with ``assert`` on and off, with 203e047's compiled
hooks (the event hooks' stream-key cache holding its streams by strong references), recorded on
one H200 in two calls on one machine (2026-12-02, thirteenth session, ``docs/measurements.md``,
table G13; call 4 ran the audited case first, call 5 the unaudited one).

What the runs say, and the docs repeat: the new hooks run in the engine (every connector launch
audited, 28 loads, no finding, no hazard stopped), and on this machine the audit's cost shows in
the warm TTFT, +1.0 and +3.1 ms, part of it in the load's issue (+0.5 and +1.1 ms), where the
eleventh session's calls (G11) saw none."""

from __future__ import annotations

from tests.scripts.test_recorded_ttft_graphs import (
    audited_worker_rows,
    default_graphs_ttft_table,
    load_issue_added,
)

CALLS = {"c4": ("sc_host_quiet", "sc_host_off"), "c5": ("sc_host_off", "sc_host_quiet")}


def test_the_warm_ttft_table_every_engine_on_vllms_default_graphs():
    assert default_graphs_ttft_table("ttft_graphs13", CALLS) == {
        ("c4", "sc_host_quiet"): 19.92, ("c4", "sc_host_off"): 16.81,
        ("c5", "sc_host_off"): 16.59, ("c5", "sc_host_quiet"): 17.56}


def test_the_audit_ran_in_the_engine_and_found_nothing():
    """Each audited engine's worker process reports every connector launch audited; the
    unaudited cases carry no audit at all."""
    workers = audited_worker_rows("ttft_graphs13", CALLS)
    assert all(w["launches"] == w["connector"] for w in workers.values())
    assert {call: (w["connector"], w["loads"]) for call, w in workers.items()} == {
        "c4": (1232, 28), "c5": (1194, 28)}


def test_the_loads_issue_is_longer_with_the_audit_in_both_calls():
    """Each worker's mean time to issue a load, audited minus unaudited: 1.06 and 0.52 ms (G11
    measured it within 0.2 ms); every load completed and none was stopped."""
    assert load_issue_added("ttft_graphs13", CALLS) == {"c4": 1.06, "c5": 0.52}
