"""The reference connector with ``assert`` on and off, and under faults, with its handoffs
declared by the compiled ``HandoffDeclare`` and the clocks read with their keys' hashes kept,
recorded on one H200 in three calls on two machines (2026-12-02, seventeenth session,
``docs/measurements.md``, table G18): calls 3 and 4 ran the wheel of 674420c on one machine
(call 3 the audited TTFT case first, call 4 the unaudited one), call 8 the wheel of e2a834f
(the launch counters advanced in place as well) on another, the unaudited case first.

What the runs say, and the docs repeat: every case passed, every load of the TTFT cases
completed (28 in each), the audit found nothing; the warm TTFT was 2.88 ms longer with the
audited case first (call 3), 0.27 ms longer with it second (call 4) and 2.84 ms longer with it
second (call 8). The audit counts are what each worker's report held at its last periodic
write (``final`` false: vLLM ends its workers by a signal). Call 4's engines wrote their reports
beside call 3's, so its audited case lists both calls' workers: call 4's is the one call 3 did
not list."""

from __future__ import annotations

from tests.scripts.script_modules import recorded_result
from tests.scripts.test_recorded_ttft_graphs import (
    checked_faulty_run,
    connector_worker_rows,
    default_graphs_ttft_table,
    load_issue_added,
)

FOLDER = "ttft_graphs17"
CALLS = {"c3": ("sc_host_quiet", "sc_host_off"), "c4": ("sc_host_off", "sc_host_quiet"),
         "c8": ("sc_host_off", "sc_host_quiet")}


def test_the_warm_ttft_table_every_engine_on_vllms_default_graphs():
    assert default_graphs_ttft_table(FOLDER, CALLS) == {
        ("c3", "sc_host_quiet"): 17.93, ("c3", "sc_host_off"): 15.05,
        ("c4", "sc_host_off"): 15.64, ("c4", "sc_host_quiet"): 15.91,
        ("c8", "sc_host_off"): 14.15, ("c8", "sc_host_quiet"): 16.99}


def test_the_audit_ran_in_the_engine_found_nothing_and_its_last_write_was_not_final():
    """Each call's audited worker, as last written: every connector launch it had seen was
    audited, every load of the 28, and the write was a periodic one."""
    (c3,) = connector_worker_rows(FOLDER, "c3")
    both = connector_worker_rows(FOLDER, "c4")
    assert c3 in both and len(both) == 2  # call 3's worker, listed again, and call 4's
    (c4,) = [row for row in both if row["pid"] != c3["pid"]]
    (c8,) = connector_worker_rows(FOLDER, "c8")
    for worker in (c3, c4, c8):
        assert worker["launches"] == worker["connector"] and not worker["final"]
        assert worker["loads"] == 28
    assert (c3["connector"], c4["connector"], c8["connector"]) == (1221, 1188, 1193)


def test_every_load_completed_and_the_issue_took_longer_audited_in_two_calls():
    """Each worker's mean time to issue a load, audited minus unaudited."""
    assert load_issue_added(FOLDER, CALLS) == {"c3": 0.95, "c4": -0.12, "c8": 0.98}


def test_the_faulty_runs_pass_with_the_compiled_handoff():
    """Call 3: 28 preemptions, 94 loads (16 failed, 13 faults injected); call 8: 26
    preemptions, 93 loads (18 failed, 13 faults); the tokens of ``ref_tp1_graphs`` in both;
    the connector's worker audited 3,652 and 3,930 launches and 93 loads each by its last
    write, no finding."""
    c3 = checked_faulty_run(f"{FOLDER}/c3", "FULL_AND_PIECEWISE", 28, (94, 16, 13))
    c8 = checked_faulty_run(f"{FOLDER}/c8", "FULL_AND_PIECEWISE", 26, (93, 18, 13))
    assert (c3["connector"], c3["loads"], c3["final"]) == (3652, 93, False)
    assert (c8["connector"], c8["loads"], c8["final"]) == (3930, 93, False)
    for call in ("c3", "c8"):
        result = recorded_result(f"{FOLDER}/{call}", "faulty_tp1_graphs")
        assert result["audit_hooks"] == "compiled (streamcheck._speedups)"
