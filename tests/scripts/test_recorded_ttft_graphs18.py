"""The reference connector with ``assert`` on and off in the real engine, the wheel of 004e671
(a load's writes checked under one lock), recorded on one H200 (2026-12-02, eighteenth
session, ``docs/measurements.md``, table G19): call 6 ran the pair twice (the unaudited case
first, then the audited one first) and ``faulty_tp1_graphs``; call 9, on another machine, four
pairs, the order turning from pair to pair.

What the runs say, and the docs repeat: every case passed, every load completed, the audit
found nothing; the audited case's warm TTFT minus the unaudited one's was -1.90, +2.08, -0.51,
+1.66, +0.43 and +1.47 ms, the audited case run first in the second, fourth and sixth pairs:
a mean of +0.54 ms over six pairs, each order three times."""

from __future__ import annotations

from tests.scripts.test_recorded_ttft_graphs import (
    check_audited_workers,
    checked_faulty_run,
    load_issue_added,
    ttft_added,
)

FOLDER = "ttft_graphs18"
CALLS = {"c6": ("sc_host_off", "sc_host_quiet"), "c6b": ("sc_host_quiet", "sc_host_off"),
         "c9r1": ("sc_host_off", "sc_host_quiet"), "c9r2": ("sc_host_quiet", "sc_host_off"),
         "c9r3": ("sc_host_off", "sc_host_quiet"), "c9r4": ("sc_host_quiet", "sc_host_off")}


def test_the_warm_ttft_audited_minus_unaudited_in_each_pair():
    added = ttft_added(FOLDER, CALLS)
    assert added == {"c6": -1.9, "c6b": 2.08, "c9r1": -0.51, "c9r2": 1.66, "c9r3": 0.43,
                     "c9r4": 1.47}
    assert round(sum(added.values()) / len(added), 2) == 0.54


def test_the_audit_ran_in_every_audited_engine_and_found_nothing():
    """Each audited worker as last written (a periodic write): every connector launch it had
    seen audited, 24 or 28 of the 28 loads."""
    check_audited_workers(FOLDER, CALLS, (24, 28))


def test_every_load_completed_in_both_cases_of_every_pair():
    assert load_issue_added(FOLDER, CALLS) == {"c6": -0.53, "c6b": 0.52, "c9r1": -0.02,
                                               "c9r2": 0.21, "c9r3": 0.18, "c9r4": 0.39}


def test_the_faulty_run_passes_with_the_writes_checked_under_one_lock():
    """30 preemptions, 92 loads (15 failed, 13 faults injected), the tokens of
    ``ref_tp1_graphs``; 4,059 launches and 92 loads audited by the last write, no finding."""
    engine = checked_faulty_run(f"{FOLDER}/c6", "FULL_AND_PIECEWISE", 30, (92, 15, 13))
    assert (engine["connector"], engine["loads"]) == (4059, 92)
