"""The reference connector with ``assert`` on and off in the real engine, the wheel of 5108788
(the audit's locks taken in place, ``FastLock``; a ``wait_stream`` that adds to its stream's
clock merged in C), recorded on one H200 host (2026-12-03, twenty-sixth session,
``docs/measurements.md``, table G26): one device call ran ``faulty_tp1_graphs`` and the TTFT
pair (the unaudited case first), then the pair again, the audited case first.

The device brings back a limited number of files: ``faulty_tp1_graphs`` and the first
unaudited case are the case files themselves; the other three are rebuilt from the summary
line the driver printed for each (``rebuilt_from`` says so), which carries every field but the
token ids (each case's verdict on them was PASS in the same log).

What the runs say, and the docs repeat: every case passed, every load completed, the audit
found nothing; each audited worker read its current streams natively, proven in the engine;
the audited case's warm TTFT minus the unaudited one's was +1.89 and -2.03 ms, the case run
second the slower in both pairs."""

from __future__ import annotations

import importlib
import math
import statistics

from tests.scripts.script_modules import recorded_result
from tests.scripts.test_recorded_ttft_graphs import (
    check_audited_workers,
    checked_faulty_run,
    connector_worker_rows,
    load_issue_added,
    ttft_added,
)

FOLDER = "ttft_graphs25"
CALLS = {"c13r1": ("sc_host_off", "sc_host_quiet"), "c13r2": ("sc_host_quiet", "sc_host_off")}


def test_the_warm_ttft_audited_minus_unaudited_in_each_pair():
    added = ttft_added(FOLDER, CALLS)
    assert added == {"c13r1": 1.89, "c13r2": -2.03}
    assert round(sum(added.values()) / len(added), 2) == -0.07


def test_the_audit_ran_in_every_audited_engine_and_found_nothing():
    """Each audited worker as last written (a periodic write): every connector launch it had
    seen audited (1,221 and 583), 28 and 20 of the 28 loads."""
    check_audited_workers(FOLDER, CALLS, (20, 28))
    launches = [connector_worker_rows(FOLDER, call)[0]["connector"] for call in CALLS]
    assert launches == [1221, 583]


def test_each_audited_worker_read_its_current_streams_natively():
    for call in CALLS:
        (worker,) = connector_worker_rows(FOLDER, call)
        assert worker["stream_reads"] == "native (c10::cuda), proven; devices 0", call


def test_every_load_completed_and_each_pairs_issue_times():
    assert load_issue_added(FOLDER, CALLS) == {"c13r1": 0.58, "c13r2": -0.51}


def test_the_rebuilt_cases_say_so_and_the_kept_ones_are_whole():
    for call, name in (("c13r1", "sc_host_quiet"), ("c13r2", "sc_host_quiet"),
                       ("c13r2", "sc_host_off")):
        case = recorded_result(f"{FOLDER}/{call}", f"ttft_graphs_{name}", "rebuilt_from")
        assert "did not come back" in case
        assert "tokens" not in recorded_result(f"{FOLDER}/{call}", f"ttft_graphs_{name}")
    assert "tokens" in recorded_result(f"{FOLDER}/c13r1", "ttft_graphs_sc_host_off")


def test_the_faulty_run_passes_with_this_wheel():
    """29 preemptions, 95 loads (18 failed, 13 faults injected), the tokens of
    ``ref_tp1_graphs``; 3,800 launches and 95 loads audited by the last write, no finding, the
    current streams read natively."""
    engine = checked_faulty_run(f"{FOLDER}/c13r1", "FULL_AND_PIECEWISE", 29, (95, 18, 13))
    assert (engine["connector"], engine["loads"]) == (3800, 95)
    assert engine["stream_reads"] == "native (c10::cuda), proven; devices 0"


def test_over_the_thirty_pairs_of_g19_to_g26_the_order_and_the_audit():
    """Every recorded pair since G19 (ttft_graphs18-25, eight wheels), by which case ran first:
    the case run second is the slower by about half a millisecond either way, so each call's
    two pairs (the order turned) are averaged: fifteen such averages, mean +0.54 ms, the
    audit's cost in a warm TTFT of 15-20 ms; their spread (-1.11 to +2.65) leaves it within
    -0.06 to +1.15 ms (a t interval, 95 %)."""
    by_order: dict[str, list[float]] = {"sc_host_off": [], "sc_host_quiet": []}
    turned: list[float] = []
    for n in range(18, 26):
        module = importlib.import_module(f"tests.scripts.test_recorded_ttft_graphs{n}")
        added = list(ttft_added(module.FOLDER, module.CALLS).items())
        for call, value in added:
            by_order[module.CALLS[call][0]].append(value)
        for (first, a), (second, b) in zip(added[::2], added[1::2], strict=True):
            assert {module.CALLS[first][0], module.CALLS[second][0]} == set(by_order)
            turned.append((a + b) / 2)
    assert [len(v) for v in by_order.values()] == [15, 15]
    assert round(statistics.mean(by_order["sc_host_off"]), 2) == 1.06  # the audited one second
    assert round(statistics.mean(by_order["sc_host_quiet"]), 2) == 0.02  # the audited one first
    mean, spread = statistics.mean(turned), statistics.stdev(turned) / math.sqrt(len(turned))
    assert (round(mean, 2), round(min(turned), 2), round(max(turned), 2)) == (0.54, -1.11, 2.65)
    t_975_14 = 2.145  # Student's t, 14 degrees of freedom
    assert (round(mean - t_975_14 * spread, 2), round(mean + t_975_14 * spread, 2)) == (-0.06,
                                                                                        1.15)
