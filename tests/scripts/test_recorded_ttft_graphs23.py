"""The reference connector with ``assert`` on and off in the real engine, the wheel of 9bf9fe8
(the compiled hooks' current-stream reads made natively once proven on a made-up stream, the
connector's handoffs among them; its hooks compiled on the host), recorded on one H200 host
(2026-12-03, twenty-third session, ``docs/measurements.md``, table G24): call 4 ran the TTFT
pair twice (the unaudited case first, then the audited one first), call 5 twice more, the
order turning.

What the runs say, and the docs repeat: every case passed, every load completed, the audit
found nothing; each audited worker's report says its current streams were read natively
(``stream_reads``), proven in the engine itself, whose steps never leave the default stream
at TP=1; the audited case's warm TTFT minus the unaudited one's was +1.70, -1.66, +1.95 and
+0.91 ms, a mean of +0.72 ms over four pairs, the audited case the slower in three."""

from __future__ import annotations

from tests.scripts.script_modules import recorded_result
from tests.scripts.test_recorded_ttft_graphs import (
    check_audited_workers,
    connector_worker_rows,
    load_issue_added,
    ttft_added,
)

FOLDER = "ttft_graphs23"
CALLS = {"c4r1": ("sc_host_off", "sc_host_quiet"), "c4r2": ("sc_host_quiet", "sc_host_off"),
         "c5r3": ("sc_host_off", "sc_host_quiet"), "c5r4": ("sc_host_quiet", "sc_host_off")}


def test_the_warm_ttft_audited_minus_unaudited_in_each_pair():
    added = ttft_added(FOLDER, CALLS)
    assert added == {"c4r1": 1.7, "c4r2": -1.66, "c5r3": 1.95, "c5r4": 0.91}
    assert round(sum(added.values()) / len(added), 2) == 0.72


def test_the_audit_ran_in_every_audited_engine_and_found_nothing():
    """Each audited worker as last written (a periodic write): every connector launch it had
    seen audited (791 to 1,253), 24 or 28 of the 28 loads."""
    check_audited_workers(FOLDER, CALLS, (24, 28))


def test_each_audited_worker_read_its_current_streams_natively():
    """The worker that audited the connector's launches proved the native read and used it
    on its device; the engine's front process, which audited nothing, never needed it."""
    for call in CALLS:
        (worker,) = connector_worker_rows(FOLDER, call)
        assert worker["stream_reads"] == "native (c10::cuda), proven; devices 0", call
        rows = recorded_result(f"{FOLDER}/{call}", "ttft_graphs_sc_host_quiet", "audit")["rows"]
        idle = [row for row in rows if not row["launches"]]
        assert [row["stream_reads"] for row in idle] == [
            "torch's (the native read not proven yet)"], call


def test_every_load_completed_and_each_pairs_issue_times():
    assert load_issue_added(FOLDER, CALLS) == {"c4r1": 0.11, "c4r2": -0.19, "c5r3": 0.66,
                                               "c5r4": 0.36}
