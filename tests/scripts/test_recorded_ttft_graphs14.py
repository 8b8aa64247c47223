"""The reference connector's async loads with ``assert`` on and off, with bbdeb51's compiled
hooks (torch's ``Stream.wait_stream`` hooked whole), recorded on one H200 in two calls on one
machine (2026-12-02, fourteenth session, ``docs/measurements.md``, table G14; call 4 ran the
audited case first, call 5 the unaudited one).

What the runs say, and the docs repeat: with every ``wait_stream`` of the engine going through
the new hook, every load completed (28 in each case, none stopped) and the audit found nothing;
the warm TTFT cost +1.7 ms in one call and nothing in the other. The audit counts are what each
worker's report held at its last periodic write: vLLM ends its workers by a signal, so the exit
write never ran (``final`` false), and these writes hold 22 and 20 of the 28 loads."""

from __future__ import annotations

from tests.scripts.test_recorded_ttft_graphs import (
    audited_worker_rows,
    default_graphs_ttft_table,
    load_issue_added,
)

CALLS = {"c4": ("sc_host_quiet", "sc_host_off"), "c5": ("sc_host_off", "sc_host_quiet")}


def test_the_warm_ttft_table_every_engine_on_vllms_default_graphs():
    assert default_graphs_ttft_table("ttft_graphs14", CALLS) == {
        ("c4", "sc_host_quiet"): 17.02, ("c4", "sc_host_off"): 15.34,
        ("c5", "sc_host_off"): 19.44, ("c5", "sc_host_quiet"): 18.1}


def test_the_audit_ran_in_the_engine_found_nothing_and_its_last_write_was_not_final():
    """The audited worker's report, as last written: every connector launch it had seen was
    audited, none found anything, and the write was a periodic one; the unaudited cases carry
    no audit at all."""
    workers = audited_worker_rows("ttft_graphs14", CALLS)
    assert all(w["launches"] == w["connector"] and not w["final"] for w in workers.values())
    assert {call: (w["connector"], w["loads"]) for call, w in workers.items()} == {
        "c4": (693, 22), "c5": (650, 20)}


def test_every_load_completed_and_the_issue_moved_both_ways():
    """Each worker's mean time to issue a load, audited minus unaudited: +1.06 ms in call 4,
    -0.12 in call 5; every load completed and none was stopped."""
    assert load_issue_added("ttft_graphs14", CALLS) == {"c4": 1.06, "c5": -0.12}
