"""The reference connector with ``assert`` on and off in the real engine, the wheel of 18a6074
(each stream's creation kept as plain fields in the compiled core's table, the
``torch.cuda.current_stream()`` the audit installs compiled, an event record's current stream
read natively; its hooks compiled on the host), recorded on one H200 host (2026-12-03,
twenty-fourth session, ``docs/measurements.md``, table G25): call 11 ran the TTFT pair twice,
the unaudited case first, then the audited one first.

What the runs say, and the docs repeat: every case passed, every load completed, the audit
found nothing; each audited worker's report says its current streams were read natively,
proven in the engine; the audited case's warm TTFT minus the unaudited one's was +1.58 and
-0.02 ms."""

from __future__ import annotations

from tests.scripts.test_recorded_ttft_graphs import (
    check_audited_workers,
    connector_worker_rows,
    load_issue_added,
    ttft_added,
)

FOLDER = "ttft_graphs24"
CALLS = {"c11r1": ("sc_host_off", "sc_host_quiet"), "c11r2": ("sc_host_quiet", "sc_host_off")}


def test_the_warm_ttft_audited_minus_unaudited_in_each_pair():
    assert ttft_added(FOLDER, CALLS) == {"c11r1": 1.58, "c11r2": -0.02}


def test_the_audit_ran_in_every_audited_engine_and_found_nothing():
    """Each audited worker as last written (a periodic write): every connector launch it had
    seen audited (774 and 1,219), 22 or 28 of the 28 loads."""
    check_audited_workers(FOLDER, CALLS, (22, 28))


def test_each_audited_worker_read_its_current_streams_natively():
    for call in CALLS:
        (worker,) = connector_worker_rows(FOLDER, call)
        assert worker["stream_reads"] == "native (c10::cuda), proven; devices 0", call


def test_every_load_completed_and_each_pairs_issue_times():
    assert load_issue_added(FOLDER, CALLS) == {"c11r1": 0.25, "c11r2": 0.12}
