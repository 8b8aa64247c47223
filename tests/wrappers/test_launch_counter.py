"""A launch site's counter: an ``itertools.count`` with the Python core, the compiled core's
``LaunchCounter`` with it (its hooks advance it in place, no int made per launch). Either
counts the same launches, reads back the same, and starts again from a reset the same way.
The compiled cases are skipped, and say so, where the extension is not built."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from streamcheck import installer
from streamcheck.core import coverage
from streamcheck.core.coverage import Coverage, read_count
from streamcheck.wrappers import speedups
from streamcheck.wrappers.generated import checked_by_compiled_code
from streamcheck.wrappers.launches import wrap_stream_method

needs_build = pytest.mark.skipif(not speedups.built(),
                                 reason="streamcheck._speedups is not built here")
CORES = ["python", pytest.param("compiled", marks=needs_build)]


@needs_build
def test_a_launch_counter_iterates_as_itertools_count_and_reads_without_advancing():
    from streamcheck._speedups import LaunchCounter

    counter = LaunchCounter()
    assert iter(counter) is counter and counter.value == 0
    assert [next(counter) for _ in range(3)] == [0, 1, 2] == list(itertools.islice(
        itertools.count(), 3))
    assert counter.value == 3 == read_count(counter) and counter.value == 3
    assert repr(counter) == "LaunchCounter(3)"
    with pytest.raises(AttributeError):
        counter.value = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        LaunchCounter(5)  # type: ignore[call-arg]


@pytest.mark.parametrize("core", CORES)
def test_each_core_makes_its_own_counters_and_both_read_back(core):
    speedups.use(core)
    try:
        expected = "LaunchCounter" if core == "compiled" else "count"
        assert coverage.make_counter.__name__ == expected
        cov = Coverage()
        counter = cov.counter("op.a", "target")
        assert type(counter).__name__ == expected and cov.counter("op.a") is counter
        for _ in range(5):
            next(counter)
        assert cov.launches_by_op() == {"op.a": 5} and read_count(counter) == 5
        cov.reset_counts()  # a forked child counts from zero, its wrappers keep their counters
        next(counter)
        assert cov.launches_by_op() == {"op.a": 1} and cov.launches() == 1
    finally:
        speedups.use("auto")


STREAM = SimpleNamespace(device_index=0, stream_id=5, cuda_stream=0x7F05)


class Comm:
    """vLLM's shape: ``stream=None`` resolves through an accessor that keeps its stream."""

    device = 0

    def current_stream(self):
        return STREAM

    def all_reduce(self, tensor, stream=None):
        return tensor


def wrap() -> None:
    """The audit's launch wrapper on Comm.all_reduce; the thread's current stream is STREAM."""
    wrap_stream_method(installer._registry, installer._gate, Comm, "all_reduce",
                       "bench.all_reduce", resolve="self.current_stream()",
                       device_expr="self.device", accessor="",
                       current_of_device=lambda device: (STREAM.stream_id, device, 1),
                       current_raw_stream=lambda device: STREAM.cuda_stream, fixed_device=True)


@pytest.mark.parametrize("core", CORES)
def test_the_hooks_count_each_launch_on_the_site_counter(core, monkeypatch):
    """The compiled launch check advances the site's LaunchCounter in place (explicit
    streams and resolved ones); the count the report gives is the number of launches, in both
    cores, a counter made before the core
    changed (an itertools.count under the compiled hooks) included."""
    monkeypatch.setenv("STREAMCHECK_CORE", core)
    aud = installer.install("assert")
    try:
        monkeypatch.setattr(Comm, "all_reduce", Comm.all_reduce)  # restored after the test
        wrap()
        assert checked_by_compiled_code(Comm.__dict__["all_reduce"]) == (core == "compiled")
        comm = Comm()
        for _ in range(4):
            comm.all_reduce(None, stream=STREAM)  # an explicit stream
        for _ in range(3):
            comm.all_reduce(None)  # stream=None: resolved through the accessor
        assert aud.coverage.launches_by_op()["bench.all_reduce"] == 7
        assert not aud.findings()
        if core == "compiled":  # a counter of the other kind, made before: still counted
            aud.coverage._counters["bench.all_reduce"] = old = itertools.count(7)
            installer._registry.restore_all()
            wrap()
            comm.all_reduce(None, stream=STREAM)
            assert read_count(old) == 8 == aud.coverage.launches_by_op()["bench.all_reduce"]
    finally:
        installer.uninstall()
        speedups.use("auto")
