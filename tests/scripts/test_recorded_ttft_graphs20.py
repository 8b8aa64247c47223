"""The reference connector with ``assert`` on and off in the real engine, the wheel of 5a61d93
(a handoff calls the current-stream read itself; the creation record's book read once per
auditor), recorded on H200 hosts (2026-12-03, twentieth session, ``docs/measurements.md``,
table G21): call 3 ran ``faulty_tp1_graphs`` and the TTFT pair twice (the unaudited case
first, then the audited one first); call 6, on another machine, the pair twice more, the order
turning.

What the runs say, and the docs repeat: every case passed, every load completed, the audit
found nothing; the audited case's warm TTFT minus the unaudited one's was +1.19, +2.81, +2.15
and +1.44 ms, a mean of +1.90 ms over four pairs, each order twice: the audited case the slower
in every pair, its loads' issue 0.47-0.70 ms longer. Its issue was as long as in G20
(2.30-3.10 ms against 2.45-3.11); the unaudited one's shorter (1.66-2.63 against 2.46-2.84)."""

from __future__ import annotations

from tests.scripts.test_recorded_ttft_graphs import (
    check_audited_workers,
    checked_faulty_run,
    load_issue_added,
    only_worker,
    ttft_added,
)

FOLDER = "ttft_graphs20"
CALLS = {"c3r1": ("sc_host_off", "sc_host_quiet"), "c3r2": ("sc_host_quiet", "sc_host_off"),
         "c6r3": ("sc_host_off", "sc_host_quiet"), "c6r4": ("sc_host_quiet", "sc_host_off")}


def test_the_warm_ttft_audited_minus_unaudited_in_each_pair():
    added = ttft_added(FOLDER, CALLS)
    assert added == {"c3r1": 1.19, "c3r2": 2.81, "c6r3": 2.15, "c6r4": 1.44}
    assert round(sum(added.values()) / len(added), 2) == 1.9


def test_the_audit_ran_in_every_audited_engine_and_found_nothing():
    """Each audited worker as last written (a periodic write): every connector launch it had
    seen audited, 22 to 28 of the 28 loads."""
    check_audited_workers(FOLDER, CALLS, range(22, 29))


def test_every_load_completed_and_the_audited_issue_was_the_longer_in_each_pair():
    assert load_issue_added(FOLDER, CALLS) == {"c3r1": 0.53, "c3r2": 0.65, "c6r3": 0.47,
                                               "c6r4": 0.7}
    issue = {case: sorted(only_worker(FOLDER, call, f"sc_host_{case}")["load_issue_ms"]
                          for call in CALLS) for case in ("quiet", "off")}
    assert issue == {"quiet": [2.304, 2.579, 3.012, 3.1], "off": [1.657, 2.045, 2.309, 2.634]}


def test_the_faulty_run_passes_with_this_wheel():
    """29 preemptions, 93 loads (16 failed, 13 faults injected), the tokens of
    ``ref_tp1_graphs``; 3,450 launches and 93 loads audited by the last write, no finding."""
    engine = checked_faulty_run(f"{FOLDER}/c3r1", "FULL_AND_PIECEWISE", 29, (93, 16, 13))
    assert (engine["connector"], engine["loads"]) == (3450, 93)
