"""The connector's timeline: bounded, ordered, per thread, and free when off."""

from __future__ import annotations

import threading

import pytest

from streamcheck.connector.timeline import Timeline


def test_an_off_timeline_keeps_nothing():
    timeline = Timeline()
    timeline.note("poll", 3)
    assert not timeline.on and timeline.records() == []


def test_records_are_ordered_bounded_and_name_their_thread():
    timeline = Timeline(3)
    for i in range(5):
        timeline.note("step", i)
    worker = threading.Thread(target=timeline.note, args=("job", "save g"), name="kv-worker")
    worker.start()
    worker.join()
    records = timeline.records()
    assert [(r[2], r[3]) for r in records] == [("step", "3"), ("step", "4"), ("job", "save g")]
    assert records[-1][1] == "kv-worker"
    assert [r[0] for r in records] == sorted(r[0] for r in records)


def test_a_negative_size_is_refused():
    with pytest.raises(ValueError, match="zero or more"):
        Timeline(-1)
