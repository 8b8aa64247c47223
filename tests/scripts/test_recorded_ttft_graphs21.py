"""The reference connector with ``assert`` on and off in the real engine, the wheel of 4dc1fdd
(its hooks compiled on the host with the interpreter's own flags, -O2 -DNDEBUG there, where
the GPU runs before kept the C API's asserts), recorded on one H200 host (2026-12-03,
twenty-first session, ``docs/measurements.md``, table G22): call 3 ran the TTFT pair twice
(the unaudited case first, then the audited one first), call 4 twice more, the order turning.

What the runs say, and the docs repeat: every case passed, every load completed, the audit
found nothing; the audited case's warm TTFT minus the unaudited one's was +2.21, -2.01, +4.84
and +0.47 ms, a mean of +1.38 ms over four pairs, the audited case the slower in three; its
loads' issue +0.59, -0.48, +1.09 and +0.34 ms."""

from __future__ import annotations

from tests.scripts.test_recorded_ttft_graphs import (
    check_audited_workers,
    load_issue_added,
    only_worker,
    ttft_added,
)

FOLDER = "ttft_graphs21"
CALLS = {"c3r1": ("sc_host_off", "sc_host_quiet"), "c3r2": ("sc_host_quiet", "sc_host_off"),
         "c4r3": ("sc_host_off", "sc_host_quiet"), "c4r4": ("sc_host_quiet", "sc_host_off")}


def test_the_warm_ttft_audited_minus_unaudited_in_each_pair():
    added = ttft_added(FOLDER, CALLS)
    assert added == {"c3r1": 2.21, "c3r2": -2.01, "c4r3": 4.84, "c4r4": 0.47}
    assert round(sum(added.values()) / len(added), 2) == 1.38


def test_the_audit_ran_in_every_audited_engine_and_found_nothing():
    """Each audited worker as last written (a periodic write): every connector launch it had
    seen audited (705 to 1,222), 22 or 28 of the 28 loads."""
    check_audited_workers(FOLDER, CALLS, (22, 28))


def test_every_load_completed_and_each_pairs_issue_times():
    assert load_issue_added(FOLDER, CALLS) == {"c3r1": 0.59, "c3r2": -0.48, "c4r3": 1.09,
                                               "c4r4": 0.34}
    issue = {case: sorted(only_worker(FOLDER, call, f"sc_host_{case}")["load_issue_ms"]
                          for call in CALLS) for case in ("quiet", "off")}
    assert issue == {"quiet": [2.198, 2.711, 2.957, 3.044], "off": [1.953, 2.369, 2.373, 2.676]}
