"""The reference connector with ``assert`` on and off, and under faults, with the connector's
checked launch, its host waits and its event waits' merges compiled (``LaunchCheck``,
``GuardedCall`` HOST_WAIT and EVENT_WAIT), recorded on one H200 in two calls on one machine
(2026-12-02, sixteenth session, ``docs/measurements.md``, table G16; call 5 ran the audited
TTFT case first, call 6 the unaudited one).

What the runs say, and the docs repeat: every case passed, every load of the TTFT cases
completed (28 in each), the audit found nothing; the warm TTFT was 2.33 ms shorter with the
audited case first and 1.18 ms longer with it second. The audit counts are what each worker's
report held at its last periodic write (``final`` false: vLLM ends its workers by a signal).
Call 6's engines wrote their reports beside call 5's, so its audited case lists both calls'
workers: call 6's is the one call 5 did not list. Call 9 ran on another machine with the
frames read in place as well (table G17)."""

from __future__ import annotations

from tests.scripts.script_modules import recorded_result
from tests.scripts.test_recorded_ttft_graphs import (
    checked_faulty_run,
    connector_worker_rows,
    default_graphs_ttft_table,
    load_issue_added,
)

FOLDER = "ttft_graphs16"
CALLS = {"c5": ("sc_host_quiet", "sc_host_off"), "c6": ("sc_host_off", "sc_host_quiet")}


def test_the_warm_ttft_table_every_engine_on_vllms_default_graphs():
    assert default_graphs_ttft_table(FOLDER, CALLS) == {
        ("c5", "sc_host_quiet"): 17.43, ("c5", "sc_host_off"): 19.76,
        ("c6", "sc_host_off"): 15.18, ("c6", "sc_host_quiet"): 16.36}


def _worker_rows(call: str) -> list[dict]:
    return connector_worker_rows(FOLDER, call)


def test_the_audit_ran_in_the_engine_found_nothing_and_its_last_write_was_not_final():
    """Each call's audited worker, as last written: every connector launch it had seen was
    audited, every load of the 28, none found anything, and the write was a periodic one."""
    (c5,) = _worker_rows("c5")
    both = _worker_rows("c6")
    assert c5 in both and len(both) == 2  # call 5's worker, listed again, and call 6's
    (c6,) = [row for row in both if row["pid"] != c5["pid"]]
    for worker in (c5, c6):
        assert worker["launches"] == worker["connector"] and not worker["final"]
    assert (c5["connector"], c5["loads"], c6["connector"], c6["loads"]) == (1227, 28, 1222, 28)


def test_every_load_completed_and_the_issue_moved_both_ways():
    """Each worker's mean time to issue a load, audited minus unaudited: -0.59 ms in call 5,
    +0.30 in call 6; every load completed and none was stopped."""
    assert load_issue_added(FOLDER, CALLS) == {"c5": -0.59, "c6": 0.3}


def test_the_faulty_run_passes_with_the_compiled_launch_check():
    """29 preemptions, 93 loads (16 failed, 13 faults injected), the tokens of
    ``ref_tp1_graphs``; the connector's worker audited 3,514 launches and 93 loads by its last
    write, no finding."""
    engine = checked_faulty_run(f"{FOLDER}/c5", "FULL_AND_PIECEWISE", 29, (93, 16, 13))
    assert (engine["connector"], engine["loads"], engine["final"]) == (3514, 93, False)
    result = recorded_result(f"{FOLDER}/c5", "faulty_tp1_graphs")
    assert result["audit_hooks"] == "compiled (streamcheck._speedups)"


def test_call_9_with_the_frames_read_in_place():
    """Call 9, on another machine, with the sites and switches read from the interpreter's
    frames in place (streamcheck/_frames.c) and the Declarer's bound locks: the faulty run
    passes (30 preemptions, 93 loads, 16 failed, 13 faults; 3,024 launches and 78 loads
    audited by the last write, no finding), and the audited TTFT case, run first, took
    19.73 ms against 19.81 off, every load of its 28 audited."""
    engine = checked_faulty_run(f"{FOLDER}/c9", "FULL_AND_PIECEWISE", 30, (93, 16, 13))
    assert (engine["connector"], engine["loads"], engine["final"]) == (3024, 78, False)
    calls = {"c9": ("sc_host_quiet", "sc_host_off")}
    assert default_graphs_ttft_table(FOLDER, calls) == {
        ("c9", "sc_host_quiet"): 19.73, ("c9", "sc_host_off"): 19.81}
    assert load_issue_added(FOLDER, calls) == {"c9": 0.23}
    (worker,) = _worker_rows("c9")
    assert (worker["connector"], worker["loads"], worker["final"]) == (1222, 28, False)
