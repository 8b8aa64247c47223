"""Every rule: a positive case and a clean case, with real threads, no GPU."""

from __future__ import annotations

import threading
import warnings

import pytest

from streamcheck.core import roles
from streamcheck.core.auditor import Auditor, StreamHazardWarning
from streamcheck.core.errors import StreamHazardError
from streamcheck.core.ids import StreamRef
from streamcheck.core.modes import Mode
from tests.core.fakes import created, in_thread, made_current

S = StreamRef(0, 7, 0x7F00)
DEFAULT0 = StreamRef(0, 0)
A = StreamRef(0, 3, 0x3000)


def rule_ids(findings):
    return sorted(f.rule_id for f in findings)


def test_foreign_stream_positive_another_thread_made_it_current():
    aud = Auditor(Mode.RECORD)
    _, helper = in_thread(lambda: made_current(aud.book, S, name="kv-connector"))
    found = aud.review("nccl.all_reduce", S, DEFAULT0, 0, implicit=True, accessor="cache")
    assert rule_ids(found) == ["foreign-stream"]
    f = found[0]
    assert f.other_thread is not None and f.other_thread.ident == helper
    assert f.other_event is not None and f.other_event.via == "test.set_stream"
    assert "kv-connector" in f.message and "cache" in f.message


def test_foreign_stream_clean_when_stream_is_the_threads_current_one():
    aud = Auditor(Mode.RECORD)
    in_thread(lambda: made_current(aud.book, S))
    made_current(aud.book, S)
    assert aud.review("nccl.all_reduce", S, S, 0, implicit=True) == []


def test_foreign_stream_not_reported_for_an_explicit_stream():
    aud = Auditor(Mode.RECORD)
    in_thread(lambda: made_current(aud.book, S))
    assert aud.review("nccl.all_reduce", S, DEFAULT0, 0, implicit=False) == []


def test_stale_stream_cache_positive_cache_missed_a_switch_in_this_thread():
    aud = Auditor(Mode.RECORD)
    made_current(aud.book, A)  # the cache saw A; the thread then switched without the hook
    found = aud.review("pynccl.all_reduce", A, S, 0, implicit=True, accessor="vllm cache")
    assert rule_ids(found) == ["stale-stream-cache"]


def test_stale_stream_cache_clean_when_cache_matches():
    aud = Auditor(Mode.RECORD)
    made_current(aud.book, A)
    assert aud.review("pynccl.all_reduce", A, A, 0, implicit=True) == []


def test_device_mismatch_positive_names_the_creating_thread():
    aud = Auditor(Mode.RECORD)
    _, helper = in_thread(lambda: None, name="kv-connector")
    created(aud.book, S, helper, name="kv-connector")
    found = aud.review("nccl.all_reduce", S, None, 1, implicit=False)
    assert rule_ids(found) == ["device-mismatch"]
    assert "cuda:1" in found[0].message and "kv-connector" in found[0].message
    assert found[0].other_thread is not None and found[0].other_thread.ident == helper


def test_device_mismatch_clean_on_the_target_device():
    aud = Auditor(Mode.RECORD)
    assert aud.review("nccl.all_reduce", StreamRef(1, 7), None, 1, implicit=False) == []


def test_default_stream_in_worker_positive():
    aud = Auditor(Mode.RECORD)
    made_current(aud.book, S, name="MainThread")  # the engine computes on S
    found, _ = in_thread(lambda: aud.review("kv.save", DEFAULT0, DEFAULT0, 0, implicit=False),
                         name="saver")
    assert rule_ids(found) == ["default-stream-in-worker"]
    assert "saver" in found[0].message


def test_default_stream_in_worker_clean_when_engine_is_on_default_too():
    aud = Auditor(Mode.RECORD)
    found, _ = in_thread(lambda: aud.review("kv.save", DEFAULT0, DEFAULT0, 0, implicit=False))
    assert found == []


def test_default_stream_in_worker_clean_for_the_engine_thread_itself():
    aud = Auditor(Mode.RECORD)
    made_current(aud.book, S)
    assert aud.review("kv.save", DEFAULT0, DEFAULT0, 0, implicit=False) == []


def test_declared_engine_thread_replaces_main_thread():
    aud = Auditor(Mode.RECORD)

    def engine():
        aud.roles.declare(roles.ENGINE)
        made_current(aud.book, S, name="rank0")
        try:
            # the declared engine on its own default stream is not a worker
            return aud.review("x", DEFAULT0, DEFAULT0, 0, implicit=False)
        finally:
            aud.roles.forget()

    found, _ = in_thread(engine)
    assert found == []


def test_assert_mode_raises_with_both_threads_in_the_message():
    aud = Auditor(Mode.ASSERT)
    in_thread(lambda: made_current(aud.book, S), name="kv-connector")
    with pytest.raises(StreamHazardError) as info:
        aud.admit("nccl.all_reduce", 0, 7, None, 0, 0, 0, implicit=True)
    text = str(info.value)
    assert info.value.rule_ids == ["foreign-stream"]
    assert "launching thread" in text and "kv-connector" in text and "fix:" in text


def test_warn_mode_warns_once_per_distinct_finding_and_counts_repeats():
    aud = Auditor(Mode.WARN)
    in_thread(lambda: made_current(aud.book, S))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            aud.admit("nccl.all_reduce", 0, 7, None, 0, 0, 0, implicit=True)
    hazards = [w for w in caught if issubclass(w.category, StreamHazardWarning)]
    assert len(hazards) == 1
    [entry] = aud.entries()
    assert entry.count == 3
    assert aud.launches == 3


def test_admit_fast_path_keeps_nothing_for_clean_launches():
    aud = Auditor(Mode.ASSERT)
    for _ in range(100):
        aud.admit("nccl.all_reduce", 0, 7, None, 0, 7, 0, implicit=True)
    assert aud.findings() == [] and aud.launches == 100


def test_listeners_see_every_finding_and_can_unsubscribe():
    aud = Auditor(Mode.RECORD)
    seen = []
    stop = aud.subscribe(seen.append)
    aud.review("x", StreamRef(0, 5), None, 1, implicit=False)
    stop()
    aud.review("x", StreamRef(0, 5), None, 1, implicit=False)
    assert [f.rule_id for f in seen] == ["device-mismatch"]


def test_off_mode_builds_no_auditor():
    with pytest.raises(ValueError, match="off"):
        Auditor(Mode.OFF)


def test_auditor_is_safe_under_concurrent_launches():
    aud = Auditor(Mode.RECORD)
    barrier = threading.Barrier(8)

    def hammer():
        barrier.wait()
        for _ in range(500):
            aud.admit("x", 0, 5, None, None, None, 1, implicit=False)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert aud.launches == 4000
    assert sum(e.count for e in aud.entries()) == 4000


def test_event_device_mismatch_positive_names_the_set_device_call():
    from streamcheck.core.rules import EVENT_RECORD

    aud = Auditor(Mode.RECORD)
    aud.book.device_set(threading.get_ident(), 0, (), 0.0)
    found = aud.review(EVENT_RECORD, StreamRef(0, 0), None, 1, implicit=False)
    assert rule_ids(found) == ["event-device-mismatch"]  # and not device-mismatch as well
    assert "made cuda:0 its current device" in found[0].message


def test_event_device_mismatch_clean_on_the_events_own_device():
    from streamcheck.core.rules import EVENT_RECORD

    aud = Auditor(Mode.RECORD)
    assert aud.review(EVENT_RECORD, StreamRef(1, 3), None, 1, implicit=False) == []


def _creation(stream: StreamRef, name: str = "kv-sender"):
    """A StreamEvent for a stream created by the calling thread."""
    import time

    from streamcheck.core.ids import ThreadRef
    from streamcheck.core.records import StreamEvent

    ident = threading.get_ident()
    return StreamEvent("created", stream, ThreadRef(ident, name), time.time(), via="test.Stream()")


def test_stream_on_unbound_device_positive_helper_never_set_its_device():
    aud = Auditor(Mode.RECORD)
    in_thread(lambda: aud.stream_created(_creation(StreamRef(0, 5)), home_device=1))
    [finding] = aud.findings()
    assert finding.rule_id == "stream-on-unbound-device"
    assert "never called set_device" in finding.message and "cuda:1" in finding.message


def test_stream_on_unbound_device_names_a_wrong_set_device():
    aud = Auditor(Mode.RECORD)

    def helper():
        aud.device_set(threading.get_ident(), 2, (), 0.0)
        aud.stream_created(_creation(StreamRef(2, 5)), home_device=1)

    in_thread(helper)
    assert "made cuda:2 its current device" in aud.findings()[0].message


def test_stream_on_unbound_device_assert_stops_the_creating_thread():
    aud = Auditor(Mode.ASSERT)
    raised, _ = in_thread(lambda: _raises(lambda: aud.stream_created(
        _creation(StreamRef(0, 5)), home_device=1)))
    assert raised == ["stream-on-unbound-device"]


def _raises(fn):
    try:
        fn()
    except StreamHazardError as exc:
        return exc.rule_ids
    return None


@pytest.mark.parametrize("case", ["home device", "engine thread", "device named", "home unknown"])
def test_stream_on_unbound_device_clean_cases(case):
    aud = Auditor(Mode.RECORD)
    stream, home = StreamRef(0, 5), 1
    if case == "home device":
        stream = StreamRef(1, 5)
    elif case in ("device named", "home unknown"):
        home = None  # the hook passes no home when the device was named, or none is known
    if case == "engine thread":
        aud.stream_created(_creation(stream), home_device=home)  # the main thread is the engine
    else:
        in_thread(lambda: aud.stream_created(_creation(stream), home_device=home))
    assert aud.findings() == []
    assert aud.book.origin(stream) is not None  # the creation is recorded either way


def test_a_role_ends_with_its_thread_and_is_not_inherited_through_a_reused_ident():
    """Thread idents are reused: a helper started after an engine thread ended must not be
    taken for that engine (the simulator's ranks end early when a launch is stopped)."""
    aud = Auditor(Mode.RECORD)
    _, ident = in_thread(lambda: aud.roles.declare(roles.ENGINE), name="rank1")
    assert aud.roles.declared_role(ident) is None
    assert ident not in aud.roles.engine_threads()
    assert aud.is_engine_thread(ident) is False
    main = threading.main_thread().ident
    assert aud.is_engine_thread(main)  # the main thread is the engine again ...
    assert aud.main_engine == main  # ... and the fast paths spare it again


def test_the_fast_paths_spare_the_main_thread_only_while_it_is_the_engine():
    """``main_engine``, the plain attribute the hooks compare with, follows the declarations:
    a live engine thread declared elsewhere takes the main thread's place, in the rules and in
    the fast paths alike; roles are the auditor's state, not the process's."""
    aud = Auditor(Mode.RECORD)
    main = threading.main_thread().ident
    assert aud.main_engine == main and aud.is_engine_thread(main)
    started, stop = threading.Event(), threading.Event()

    def engine() -> None:
        aud.roles.declare(roles.ENGINE)
        made_current(aud.book, S, name="rank0")
        started.set()
        stop.wait(10)

    worker = threading.Thread(target=engine, name="rank0")
    worker.start()
    try:
        started.wait(10)
        assert aud.main_engine is None and not aud.is_engine_thread(main)
        assert aud.role_of(main) == "" and aud.roles.engine_threads() == [worker.ident]
        assert Auditor(Mode.RECORD).main_engine == main  # another auditor's roles are its own
        aud.admit("x", 0, 0, None, 0, 0, 0, implicit=True)  # main, on the default stream
        assert [f.rule_id for f in aud.findings()] == ["default-stream-in-worker"]
    finally:
        stop.set()
        worker.join()
    aud.roles.forget(worker.ident)
    assert aud.main_engine == main
