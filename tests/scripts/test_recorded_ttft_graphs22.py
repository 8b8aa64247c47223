"""The reference connector with ``assert`` on and off in the real engine, the wheel of f2c6358
(the compiled switch log keeping each torch.cuda.Stream by its key, not the object; its hooks
compiled on the host), recorded on one H200 host (2026-12-03, twenty-second session,
``docs/measurements.md``, table G23): call 3 ran the TTFT pair twice (the unaudited case
first, then the audited one first), call 4 twice more, the order turning.

What the runs say, and the docs repeat: every case passed, every load completed, the audit
found nothing; the audited case's warm TTFT minus the unaudited one's was +0.99, +0.04, +0.30
and -1.50 ms, a mean of -0.04 ms over four pairs, the audited case the slower in three; its
loads' issue +0.12, -0.13, +0.08 and -0.25 ms."""

from __future__ import annotations

from tests.scripts.test_recorded_ttft_graphs import (
    check_audited_workers,
    load_issue_added,
    only_worker,
    ttft_added,
)

FOLDER = "ttft_graphs22"
CALLS = {"c3r1": ("sc_host_off", "sc_host_quiet"), "c3r2": ("sc_host_quiet", "sc_host_off"),
         "c4r3": ("sc_host_off", "sc_host_quiet"), "c4r4": ("sc_host_quiet", "sc_host_off")}


def test_the_warm_ttft_audited_minus_unaudited_in_each_pair():
    added = ttft_added(FOLDER, CALLS)
    assert added == {"c3r1": 0.99, "c3r2": 0.04, "c4r3": 0.3, "c4r4": -1.5}
    assert round(sum(added.values()) / len(added), 2) == -0.04


def test_the_audit_ran_in_every_audited_engine_and_found_nothing():
    """Each audited worker as last written (a periodic write): every connector launch it had
    seen audited (723 to 1,256), 22 or 28 of the 28 loads."""
    check_audited_workers(FOLDER, CALLS, (22, 28))


def test_every_load_completed_and_each_pairs_issue_times():
    assert load_issue_added(FOLDER, CALLS) == {"c3r1": 0.12, "c3r2": -0.13, "c4r3": 0.08,
                                               "c4r4": -0.25}
    issue = {case: sorted(only_worker(FOLDER, call, f"sc_host_{case}")["load_issue_ms"]
                          for call in CALLS) for case in ("quiet", "off")}
    assert issue == {"quiet": [1.969, 2.261, 2.292, 3.002], "off": [1.887, 2.393, 2.54, 2.884]}
