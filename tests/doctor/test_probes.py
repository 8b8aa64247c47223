"""The probes' verdict logic, in process, against emulated caches on the simulator.

No torch patching and no vLLM: each emulation is installed on an uninstalled fake ``torch.cuda``
namespace, the way each vLLM generation patches ``torch.cuda.set_stream``. Fast, and it pins
down what each verdict means independently of any vLLM release.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from streamcheck.doctor import fake_cuda
from streamcheck.doctor.model import Verdict
from streamcheck.doctor.probes import run_all
from streamcheck.doctor.streams import SimStreams, describe

A, N, C = Verdict.AFFECTED, Verdict.NOT_AFFECTED, Verdict.CANNOT_TELL


def module_global(ns: Any) -> Callable[[], Any]:
    prev, box = ns.set_stream, {"s": None}

    def patched(stream: Any) -> None:
        box["s"] = stream
        prev(stream)

    ns.set_stream = patched

    def current_stream() -> Any:
        if box["s"] is None:
            box["s"] = ns.current_stream()
        return box["s"]

    return current_stream


def thread_local(new_stream: bool) -> Callable[[Any], Callable[[], Any]]:
    def install(ns: Any) -> Callable[[], Any]:
        prev, tls = ns.set_stream, threading.local()

        def patched(stream: Any) -> None:
            tls.value = stream
            prev(stream)

        ns.set_stream = patched

        def current_stream() -> Any:
            if getattr(tls, "value", None) is None:
                if new_stream:
                    s = ns.Stream()
                    s.wait_stream(ns.current_stream())
                    ns.set_stream(s)
                else:
                    tls.value = ns.current_stream()
            return tls.value

        return current_stream

    return install


def placeholder(ns: Any) -> Callable[[], Any]:
    return lambda: object()  # vLLM's CPU-platform _StreamPlaceholder: not a stream


CASES = {
    "module-global": (module_global, (A, N, A)),
    "thread-local, default stream": (thread_local(False), (N, A, A)),
    "thread-local, new stream": (thread_local(True), (N, A, A)),
    "placeholder": (placeholder, (C, C, C)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_verdicts_for_each_cache_design(case: str) -> None:
    install, expected = CASES[case]
    fake = fake_cuda.build(device_count=2)
    results = run_all(SimStreams(fake), install(fake.namespace))
    assert [r.hazard for r in results] == ["module-global-cache", "fresh-thread-device",
                                          "stale-cache"]
    assert tuple(r.verdict for r in results) == expected, [r.evidence for r in results]
    assert all(r.backend == "sim" for r in results)


def test_one_device_cannot_tell_the_fresh_thread_question() -> None:
    fake = fake_cuda.build(device_count=1)
    results = {r.hazard: r for r in run_all(SimStreams(fake), thread_local(True)(fake.namespace))}
    fresh = results["fresh-thread-device"]
    assert fresh.verdict is C and "needs 2 devices, 1 visible" in fresh.evidence
    assert results["stale-cache"].verdict is A


def test_a_probe_that_raises_is_cannot_tell_not_clean() -> None:
    def broken() -> Any:
        raise RuntimeError("boom")

    fake = fake_cuda.build(device_count=2)
    results = run_all(SimStreams(fake), broken)
    assert {r.verdict for r in results} == {C}
    assert all("RuntimeError: boom" in r.evidence for r in results)


def test_cpp_switch_bypasses_set_stream_but_stream_context_does_not() -> None:
    """The simulator must model the two switching paths the stale-cache probe relies on."""
    fake = fake_cuda.build(device_count=2)
    calls: list[Any] = []
    prev = fake.namespace.set_stream
    fake.namespace.set_stream = lambda s: (calls.append(s), prev(s))
    backend = SimStreams(fake)
    s = backend.new_stream(0)
    with backend.cpp_stream(0) as inner:
        assert describe(backend.real_current_stream()).same(describe(inner))
    backend.accelerator_set_stream(s)
    assert calls == []
    with backend.stream_context(backend.new_stream(0)):
        pass
    assert len(calls) == 2  # enter and restore, both through the (patched) set_stream
