"""What the switch log keeps alive, switch by switch: the collector's view of a stream switch.

Each switch's record holds the stream made current until the log overwrites it
(``provenance.LOG_LENGTH`` records). While a new auditor's log fills, every switch leaves one
more object the collector tracks alive, and enough of them run its young generation (the
stream-heavy loop's rounds, each a new auditor timed over its first iterations, saw one young
collection every 36 iterations, about 530 stream objects in each: docs/measurements.md,
twenty-first session). Once the log is full, as a long-running engine's is, a switch frees the
oldest record's stream as it keeps its own: no growth, so no collector work from the log."""

from __future__ import annotations

import gc

import pytest

from streamcheck import installer
from streamcheck.core import provenance
from streamcheck.wrappers.streams import made_current_hook
from tests.wrappers.compiled_parts import CORES

LENGTH = 256


class TorchLikeStream:
    """A stream as ``torch.cuda.current_stream()`` makes one: a new object, tracked by the
    collector, at every call."""

    def __init__(self) -> None:
        self.device_index, self.stream_id, self.cuda_stream = 0, 3, 0x7F03


def young_objects_added(hook, switches: int) -> int:
    """How much the collector's young-generation count grew over ``switches`` switches, each
    on a new stream object (the collector held off, so no collection resets the count)."""
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for _ in range(switches):
            hook(TorchLikeStream())
        return gc.get_count()[0] - before
    finally:
        gc.enable()


@pytest.mark.parametrize("core", CORES)
def test_a_filling_log_keeps_each_switch_alive_and_a_full_one_does_not_grow(core, monkeypatch):
    monkeypatch.setenv("STREAMCHECK_CORE", core)
    monkeypatch.setattr(provenance, "LOG_LENGTH", LENGTH)  # read when the book is made
    installer.install("record")
    try:
        hook = made_current_hook(installer._gate, lambda stream: stream, "test.set_stream")
        filling = young_objects_added(hook, LENGTH)
        full = young_objects_added(hook, LENGTH)
        assert len(installer.current_auditor().book._log) == LENGTH
    finally:
        installer.uninstall()
    assert filling >= LENGTH  # one stream (and, in Python, its record's tuple) a switch
    assert abs(full) <= LENGTH // 16, (core, filling, full)
