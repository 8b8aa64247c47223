"""The core's locks (streamcheck/core/locks.py) and the compiled core's ``FastLock``
(streamcheck/_fast_lock.c): a lock as ``threading.Lock`` is one, for Python and for the
compiled parts, which take it without a call; either kind of lock works under either core.
The compiled cases are skipped, and say so, where the extension is not built."""

from __future__ import annotations

import signal
import sys
import threading
import weakref

import pytest

from streamcheck.core import locks
from streamcheck.core.auditor import Auditor
from streamcheck.core.modes import Mode
from streamcheck.core.roles import ThreadRoles
from streamcheck.wrappers import speedups
from tests.wrappers.test_compiled_declare import kept, made_with, script

needs_build = pytest.mark.skipif(not speedups.built(),
                                 reason="streamcheck._speedups is not built here")


@pytest.fixture
def fast_lock():
    compiled = pytest.importorskip("streamcheck._speedups")
    return compiled.FastLock


@needs_build
def test_it_is_taken_and_given_back_as_a_threading_lock_is(fast_lock):
    lock = fast_lock()
    assert not lock.locked() and "unlocked" in repr(lock)
    assert lock.acquire() is True and lock.locked() and "locked" in repr(lock)
    assert lock.acquire(False) is False  # not reentrant
    assert lock.acquire(blocking=True, timeout=0.01) is False
    lock.release()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        lock.release()
    assert weakref.ref(lock)() is lock


@needs_build
@pytest.mark.parametrize("args, kwargs", [
    ((False, 1.0), {}), ((), {"timeout": -5}), ((), {"tiemout": 1}), ((1, 2, 3), {}),
    ((), {"timeout": "soon"}), ((True,), {"blocking": True}), ((), {"timeout": 1e300})])
def test_bad_arguments_fail_as_threading_locks_fail(fast_lock, args, kwargs):
    with pytest.raises(Exception) as expected:
        threading.Lock().acquire(*args, **kwargs)
    with pytest.raises(expected.type):
        fast_lock().acquire(*args, **kwargs)


@needs_build
def test_any_thread_may_give_it_back_and_a_waiting_thread_then_takes_it(fast_lock):
    lock, waiting, got = fast_lock(), threading.Event(), []
    lock.acquire()

    def wait_for_it():
        waiting.set()
        got.append(lock.acquire())  # waits, the GIL let go, until the main thread releases

    thread = threading.Thread(target=wait_for_it)
    thread.start()
    waiting.wait()
    lock.release()
    thread.join(timeout=30)
    assert got == [True] and lock.locked()
    released = threading.Thread(target=lock.release)  # released by a thread that did not take it
    released.start()
    released.join()
    assert not lock.locked()


@needs_build
def test_threads_taking_it_in_turn_lose_no_update(fast_lock):
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the GIL handed over as often as it can be
    try:
        lock, total = fast_lock(), [0]

        def add():
            for _ in range(2000):
                with lock:
                    before = total[0]
                    total[0] = before + 1

        threads = [threading.Thread(target=add) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert total[0] == 8000 and not lock.locked()


needs_alarm = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no signal.setitimer")


class Interrupted(Exception):
    pass


@needs_build
@needs_alarm
def test_a_signal_handlers_exception_ends_a_wait_and_one_that_returns_lets_it_go_on(fast_lock):
    lock = fast_lock()
    lock.acquire()
    calls = []

    def interrupt(signum, frame):
        calls.append(signum)
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            lock.acquire()  # held by this thread: only the handler can end the wait
        assert lock.locked() and calls == [signal.SIGALRM]
        signal.signal(signal.SIGALRM, lambda signum, frame: calls.append(signum))
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert lock.acquire(timeout=0.5) is False  # the wait went on after the handler ran
        assert calls == [signal.SIGALRM] * 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        lock.release()


def test_each_core_makes_its_own_kind_of_lock():
    python = made_with("python")
    assert type(python._lock) is type(threading.Lock())
    assert type(python.clocks._lock) is type(threading.Lock())
    if not speedups.built():
        pytest.skip("streamcheck._speedups is not built here: only the Python core ran")
    compiled = made_with("compiled")
    assert type(compiled._lock).__name__ == "FastLock"
    assert type(compiled.clocks._lock).__name__ == "FastLock"
    assert locks.make_lock is getattr(speedups.active(), "FastLock", threading.Lock)


@needs_build
def test_the_compiled_declare_keeps_the_same_accesses_under_a_threading_lock(monkeypatch):
    """An auditor made with Python's locks while the compiled core is chosen (as one made
    before a change of core): the compiled declare takes them through their methods, and
    keeps what it keeps under its own locks."""
    speedups.use("compiled")
    try:
        monkeypatch.setattr(locks, "make_lock", threading.Lock)
        plain = Auditor(Mode.ASSERT, roles=ThreadRoles())
    finally:
        speedups.use("auto")
    assert type(plain.declare).__name__ == "Declarer"
    assert type(plain._lock) is type(threading.Lock())
    fast = made_with("compiled", roles=ThreadRoles())
    assert type(fast._lock).__name__ == "FastLock"
    assert (script(plain), kept(plain)) == (script(fast), kept(fast))
    assert not plain._lock.locked() and not fast._lock.locked()
    assert not fast.clocks._lock.locked()
