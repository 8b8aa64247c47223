"""The reference connector with ``assert`` on and off, and under faults, with 2fd9da3's
compiled ``Auditor.declare`` (``Declarer``), recorded on one H200 in two calls on one machine
(2026-12-02, fifteenth session, ``docs/measurements.md``, table G15; call 6 ran the audited
TTFT case first, call 7 the unaudited one).

What the runs say, and the docs repeat: every case passed, every load of the TTFT cases
completed (28 in each, none stopped), the audit found nothing; the warm TTFT cost +0.64 ms with
the audited case first and +2.30 ms with it second. The audit counts are what each worker's
report held at its last periodic write (``final`` false: vLLM ends its workers by a signal).
Call 7's engines wrote their reports beside call 6's, so its audited case lists both calls'
workers: call 7's is the one call 6 did not list."""

from __future__ import annotations

from tests.scripts.script_modules import recorded_result
from tests.scripts.test_recorded_ttft_graphs import (
    checked_faulty_run,
    connector_worker_rows,
    default_graphs_ttft_table,
    load_issue_added,
)

FOLDER = "ttft_graphs15"
CALLS = {"c6": ("sc_host_quiet", "sc_host_off"), "c7": ("sc_host_off", "sc_host_quiet")}


def test_the_warm_ttft_table_every_engine_on_vllms_default_graphs():
    assert default_graphs_ttft_table(FOLDER, CALLS) == {
        ("c6", "sc_host_quiet"): 18.45, ("c6", "sc_host_off"): 17.81,
        ("c7", "sc_host_off"): 14.54, ("c7", "sc_host_quiet"): 16.84}


def _worker_rows(call: str) -> list[dict]:
    return connector_worker_rows(FOLDER, call)


def test_the_audit_ran_in_the_engine_found_nothing_and_its_last_write_was_not_final():
    """Each call's audited worker, as last written: every connector launch it had seen was
    audited, none found anything, and the write was a periodic one."""
    (c6,) = _worker_rows("c6")
    both = _worker_rows("c7")
    assert c6 in both and len(both) == 2  # call 6's worker, listed again, and call 7's
    (c7,) = [row for row in both if row["pid"] != c6["pid"]]
    for worker in (c6, c7):
        assert worker["launches"] == worker["connector"] and not worker["final"]
    assert (c6["connector"], c6["loads"], c7["connector"], c7["loads"]) == (1154, 28, 617, 20)


def test_every_load_completed_and_the_issue_moved_both_ways():
    """Each worker's mean time to issue a load, audited minus unaudited: -0.11 ms in call 6,
    +0.92 in call 7; every load completed and none was stopped."""
    assert load_issue_added(FOLDER, CALLS) == {"c6": -0.11, "c7": 0.92}


def test_the_faulty_run_passes_with_the_compiled_declare():
    """29 preemptions, 93 loads (16 failed, 13 faults injected), the tokens of
    ``ref_tp1_graphs``; the connector's worker audited 3,235 launches and 82 loads by its last
    write, no finding."""
    engine = checked_faulty_run(f"{FOLDER}/c6", "FULL_AND_PIECEWISE", 29, (93, 16, 13))
    assert (engine["connector"], engine["loads"], engine["final"]) == (3235, 82, False)
    result = recorded_result(f"{FOLDER}/c6", "faulty_tp1_graphs")
    assert result["audit_hooks"] == "compiled (streamcheck._speedups)"
