"""``scripts/connector_timeline.py``: a load's phases from a connector timeline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "connector_timeline.py"
spec = importlib.util.spec_from_file_location("connector_timeline", SCRIPT)
connector_timeline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(connector_timeline)

MS = 1_000_000


def record(ms: float, what: str, detail: str = "") -> list:
    return [int(ms * MS), "MainThread", what, detail]


def warm_request(t: float, req: str) -> list[list]:
    """One warm request as the connector sees it: the load issued in an idle step, retired
    two polls later, reported, an idle step, then the forward of the last block."""
    return [
        record(t, "start_load_kv", "1"), record(t + 0.1, "load.issue", req),
        record(t + 2.1, "load.issued", req), record(t + 2.2, "poll", "1"),
        record(t + 3.0, "start_load_kv", "0"), record(t + 3.1, "poll", "1"),
        record(t + 6.1, "retire", f"load {req}"), record(t + 6.2, "loads.reported", "1"),
        record(t + 7.0, "start_load_kv", "0"), record(t + 7.1, "poll", "0"),
        record(t + 11.2, "start_load_kv", "0"),
        *[record(t + 12.0 + i * 0.5, "save_kv_layer", f"layers.{i}") for i in range(16)],
        record(t + 20.5, "wait_for_save", "1"), record(t + 20.6, "poll", "0"),
    ]


def test_a_warm_requests_phases_are_measured_between_the_right_records():
    records = warm_request(0, "r1") + warm_request(100, "r2")
    loads, missed = connector_timeline.phases(records)
    assert missed == 0 and len(loads) == 2
    expected = {"issue": 2.0, "to_retire": 4.0, "to_reported": 0.1, "to_forward": 5.0,
                "to_layer0": 0.8, "layers": 7.5, "to_save": 1.0}
    for load in loads:
        assert load == pytest.approx(expected)


def test_a_load_whose_records_ran_out_is_counted_not_timed():
    records = warm_request(0, "r1") + warm_request(100, "r2")[:6]
    loads, missed = connector_timeline.phases(records)
    assert len(loads) == 1 and missed == 1


def test_the_command_reads_an_engine_check_result_and_says_when_it_has_no_timeline(
        tmp_path, capsys):
    result = tmp_path / "ttft.json"
    result.write_text(json.dumps({"result": {"stats": {"workers": [
        {"slab_loads": 1, "timeline": warm_request(0, "r1")}]}}}))
    assert connector_timeline.main([str(result)]) == 0
    out = capsys.readouterr().out
    assert "1 loads timed, 0 left out" in out and "median" in out
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"result": {"stats": {"workers": [{"slab_loads": 1}]}}}))
    assert connector_timeline.main([str(bare)]) == 2
    assert "no timeline" in capsys.readouterr().err


def test_a_load_that_issued_nothing_is_not_paired_with_the_same_requests_next_load():
    """A load that never reached the device leaves no retire record: a later load of the
    same request must not lend it its own, and a forward without layers before its
    ``wait_for_save`` is skipped, not an error."""
    failed = [record(0, "start_load_kv", "1"), record(0.1, "load.issue", "r1"),
              record(0.2, "load.issued", "r1"), record(0.3, "start_load_kv", "0"),
              record(0.4, "wait_for_save", "0")]
    loads, missed = connector_timeline.phases(failed + warm_request(10, "r1"))
    assert missed == 1 and len(loads) == 1
    assert loads[0]["issue"] == pytest.approx(2.0)


def test_a_layers_time_is_told_apart_for_the_first_forward_after_a_load():
    decode = [record(200, "start_load_kv", "0"),
              *[record(201 + i * 0.25, "save_kv_layer", f"layers.{i}") for i in range(16)],
              record(206, "wait_for_save", "0"),
              record(207, "start_load_kv", "0"),  # an idle step: no layer, not a forward
              record(208, "start_load_kv", "0"),
              *[record(209 + i * 0.25, "save_kv_layer", f"layers.{i}") for i in range(16)]]
    times = connector_timeline.layer_times(warm_request(0, "r1") + decode)
    assert times == {"after_load": [0.5], "other": [0.25, 0.25]}
    # a load reported in an idle step still marks the next forward, not a later one
    again = connector_timeline.layer_times(decode[:18] + warm_request(300, "r2") + decode[18:])
    assert again == {"after_load": [0.5], "other": [0.25, 0.25]}
