"""The reference connector with ``assert`` on and off in the real engine, the wheel of c228f8b
(``Event.synchronize`` and ``Event.query`` hooked in C), recorded on one H200 (2026-12-03,
nineteenth session, ``docs/measurements.md``, table G20): call 3 ran the engine thread's
profile pair, the TTFT pair twice (the unaudited case first, then the audited one first) and
``faulty_tp1_graphs``; call 4, on the same machine, the pair twice more, the order turning.

What the runs say, and the docs repeat: every case passed, every load completed, the audit
found nothing; the audited case's warm TTFT minus the unaudited one's was -1.89, -0.34, +1.02
and -3.06 ms, the audited case run first in the second and fourth pairs: a mean of -1.07 ms
over four pairs, each order twice; no cost the run order does not swamp. In the profile the
Python hooks of ``Event.query`` and ``synchronize`` (1,214 calls in P19) are gone."""

from __future__ import annotations

from tests.scripts.script_modules import recorded_result
from tests.scripts.test_recorded_ttft_graphs import (
    check_audited_workers,
    checked_faulty_run,
    load_issue_added,
    ttft_added,
)

FOLDER = "ttft_graphs19"
CALLS = {"c3r1": ("sc_host_off", "sc_host_quiet"), "c3r2": ("sc_host_quiet", "sc_host_off"),
         "c4r3": ("sc_host_off", "sc_host_quiet"), "c4r4": ("sc_host_quiet", "sc_host_off")}


def test_the_warm_ttft_audited_minus_unaudited_in_each_pair():
    added = ttft_added(FOLDER, CALLS)
    assert added == {"c3r1": -1.89, "c3r2": -0.34, "c4r3": 1.02, "c4r4": -3.06}
    assert round(sum(added.values()) / len(added), 2) == -1.07


def test_the_audit_ran_in_every_audited_engine_and_found_nothing():
    """Each audited worker as last written (a periodic write): every connector launch it had
    seen audited, 26 or 28 of the 28 loads."""
    check_audited_workers(FOLDER, CALLS, (26, 28))


def test_every_load_completed_in_both_cases_of_every_pair():
    assert load_issue_added(FOLDER, CALLS) == {"c3r1": -0.18, "c3r2": 0.22, "c4r3": 0.65,
                                               "c4r4": -0.07}


def test_the_faulty_run_passes_with_the_event_waits_compiled():
    """29 preemptions, 93 loads (16 failed, 13 faults injected), the tokens of
    ``ref_tp1_graphs``; 3,714 launches and 93 loads audited by the last write, no finding."""
    engine = checked_faulty_run(f"{FOLDER}/c3r1", "FULL_AND_PIECEWISE", 29, (93, 16, 13))
    assert (engine["connector"], engine["loads"]) == (3714, 93)


def test_the_engine_threads_profile_has_no_python_event_wait_hook_left():
    """The audited engine thread's profile names no frame of ``events.py``'s Python hooks
    (P19: its ``wrapper`` ran 1,214 times); the unaudited one names no streamcheck hook."""
    profiles = {case: recorded_result(f"{FOLDER}/c3p", f"prof_graphs_{case}")["profile"]
                for case in ("sc_host_quiet", "sc_host_off")}
    assert "GuardedCall" in profiles["sc_host_quiet"]
    assert "events.py" not in profiles["sc_host_quiet"]
    assert "GuardedCall" not in profiles["sc_host_off"]
    before = recorded_result("ttft_graphs18/c5", "prof_graphs_sc_host_quiet")["profile"]
    assert "events.py" in before  # the wheel of 004e671, its hooks of the waits in Python
