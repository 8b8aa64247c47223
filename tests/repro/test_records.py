"""Rank records: typed on both sides, JSON lines in between, cut lines skipped."""

from __future__ import annotations

import json

import pytest

from streamcheck.repro.records import (
    KINDS,
    Blocked,
    Done,
    Error,
    Findings,
    Progress,
    RankRecord,
    RecordTail,
    ResultLog,
    Start,
    read_records,
    record_path,
)


def test_every_kind_round_trips_through_its_json_form():
    records = [
        Start(rank=0, pid=1, t=2.0, variant="buggy", backend="sim", device=0, world_size=2),
        Progress(rank=0, iteration=3, observed={"nan_iters": 1}, extra={"note": "x"}),
        Done(rank=1, observed={"iterations_done": 3}),
        Blocked(rank=1, rules=["foreign-stream"], text="stopped"),
        Error(rank=0, error_kind="error-400", message="invalid resource handle"),
        Findings(rank=0, rules=["stale-cache"], launches_audited=4, detail=["stale-cache x1"]),
    ]
    assert {type(r) for r in records} == set(KINDS.values())
    for record in records:
        data = json.loads(json.dumps(record.to_json()))
        assert data["kind"] == record.kind and data["rank"] == record.rank
        assert RankRecord.from_json(data) == record
    # a repro's own iteration_done fields sit next to the standard ones, as before
    assert records[1].to_json()["note"] == "x" and "extra" not in records[1].to_json()


def test_what_ends_a_rank_and_what_counts_as_a_failure():
    assert [k for k, cls in KINDS.items() if cls(rank=0).ends_rank] == ["done", "blocked",
                                                                          "error"]
    assert [k for k, cls in KINDS.items() if cls(rank=0).failed] == ["blocked", "error"]


@pytest.mark.parametrize("bad", [[], {"kind": "nope", "rank": 0},
                                 {"kind": "done", "rank": 0, "surprise": 1},
                                 {"kind": "done"}])
def test_anything_else_is_refused(bad):
    with pytest.raises(ValueError):
        RankRecord.from_json(bad)


def test_the_log_writes_what_the_reader_reads_and_a_cut_line_is_skipped(tmp_path):
    log = ResultLog(record_path(tmp_path, 1), 1)
    start = log.write(Start, variant="fixed", backend="sim", world_size=2)
    done = log.write(Done, observed={"iterations_done": 3})
    log.close()
    with open(record_path(tmp_path, 1), "a") as fh:
        fh.write('{"kind": "progress", "rank": 1, "iter')  # a rank killed mid-write
    records = read_records(tmp_path)
    assert records == {1: [start, done]}
    assert start.pid > 0 and start.t > 0


def test_the_tail_reads_complete_lines_once_and_sees_a_failure(tmp_path):
    tail = RecordTail(tmp_path)
    assert tail.poll() == [] and not tail.any_failed()
    path = record_path(tmp_path, 0)
    line = json.dumps(Error(rank=0, message="boom").to_json())
    path.write_text(json.dumps(Start(rank=0).to_json()) + "\n" + line[:10])
    assert [r.kind for r in tail.poll()] == ["start"]
    assert not tail.any_failed()  # the error line is not complete yet
    path.write_text(json.dumps(Start(rank=0).to_json()) + "\n" + line + "\n")
    assert tail.any_failed()
    assert [r.kind for r in tail.records] == ["start", "error"]
    assert tail.poll() == []
