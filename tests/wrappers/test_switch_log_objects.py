"""What the switch log keeps alive, switch by switch: the collector's view of a stream switch.

A record that held the stream made current would keep it until the log overwrites it
(``provenance.LOG_LENGTH`` records): while a new auditor's log fills, every switch would leave
one more object the collector tracks alive, and enough of them run its young generation (the
stream-heavy loop's rounds, each a new auditor timed over its first iterations, saw one young
collection every 36 iterations, about 530 stream objects in each: docs/measurements.md,
twenty-first session); once full, each stream would be promoted to the oldest generation
before the log let it go. The compiled hook keeps a stream of its ``key_type``
(torch.cuda.Stream, in an install) as its key instead, so nothing of a switch outlives it; the
Python hook and a stream of any other type keep the object, and a full log then frees the
oldest record's stream as it keeps its own: no growth once full.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from streamcheck import installer
from streamcheck.core import provenance
from streamcheck.core.ids import StreamRef
from streamcheck.wrappers.streams import made_current_hook
from tests.wrappers.compiled_parts import CORES, young_objects_added

LENGTH = 256


class TorchLikeStream:
    """A stream as ``torch.cuda.current_stream()`` makes one: a new object, tracked by the
    collector, at every call; like torch.cuda.Stream, made again from its key."""

    def __init__(self, stream_id: int = 3, device_index: int = 0, device_type: int = 1
                 ) -> None:
        self.device_index, self.stream_id, self.device_type = device_index, stream_id, device_type
        self.cuda_stream = 0x7F00 + stream_id


@pytest.mark.parametrize("core", CORES)
def test_a_filling_log_keeps_each_switch_alive_and_a_full_one_does_not_grow(core, monkeypatch):
    monkeypatch.setenv("STREAMCHECK_CORE", core)
    monkeypatch.setattr(provenance, "LOG_LENGTH", LENGTH)  # read when the book is made
    installer.install("record")
    try:
        hook = made_current_hook(installer._gate, lambda stream: stream, "test.set_stream")
        filling = young_objects_added(lambda: hook(TorchLikeStream()), LENGTH)
        full = young_objects_added(lambda: hook(TorchLikeStream()), LENGTH)
        assert len(installer.current_auditor().book._log) == LENGTH
    finally:
        installer.uninstall()
    assert filling >= LENGTH  # one stream (and, in Python, its record's tuple) a switch
    assert abs(full) <= LENGTH // 16, (core, filling, full)


def test_the_compiled_hook_keeps_a_stream_of_its_key_type_by_key_alive_in_nothing(monkeypatch):
    pytest.importorskip("streamcheck._speedups")
    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    monkeypatch.setattr(provenance, "LOG_LENGTH", LENGTH)
    installer.install("record")
    try:
        hook = made_current_hook(installer._gate, lambda stream: stream, "test.set_stream",
                                 TorchLikeStream)
        filling = young_objects_added(lambda: hook(TorchLikeStream()), LENGTH)
        full = young_objects_added(lambda: hook(TorchLikeStream()), LENGTH)
        book = installer.current_auditor().book
        record = book._log[-1]
        elsewhere = book.made_current_elsewhere(StreamRef(0, 3, 0x7F03), thread_ident=0)
    finally:
        installer.uninstall()
    assert abs(filling) <= 4 and abs(full) <= 4, (filling, full)
    assert record[0] == (0, 3, 1, TorchLikeStream)  # the key, and the type that rebuilds it
    # a finding's event names the stream as the object would: its handle rebuilt from the key
    assert elsewhere is not None and elsewhere.stream == StreamRef(0, 3, 0x7F03)
    assert elsewhere.via == "test.set_stream"


class Subclass(TorchLikeStream):
    """Not the key type itself: may need more than the key to be made again."""


def id_not_an_integer() -> TorchLikeStream:
    stream = TorchLikeStream()
    stream.stream_id = "3"
    return stream


@pytest.mark.parametrize("make", [Subclass, id_not_an_integer], ids=["subclass", "field"])
def test_a_stream_not_plainly_of_the_key_type_is_kept_whole(make):
    compiled = pytest.importorskip("streamcheck._speedups")
    log = compiled.SwitchLog(4)
    gate = SimpleNamespace(auditor=SimpleNamespace(made_current=log.append))
    hook = compiled.SetStreamHook(gate, lambda s: None, "ns.set_stream", TorchLikeStream)
    stream = make()
    hook(stream)
    assert log[0][0] is stream


def test_the_key_type_is_a_type():
    compiled = pytest.importorskip("streamcheck._speedups")
    with pytest.raises(TypeError, match="key_type"):
        compiled.SetStreamHook(SimpleNamespace(auditor=None), print, "via", 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_streams_are_kept_by_their_key_read_in_place(monkeypatch):
    """On real CUDA, the installed hook reads torch.cuda.Stream's key from its fields, keeps
    no stream object a stream context made, and rebuilds the handle a finding shows."""
    pytest.importorskip("streamcheck._speedups")
    monkeypatch.setenv("STREAMCHECK_CORE", "compiled")
    monkeypatch.setattr(provenance, "LOG_LENGTH", LENGTH)
    installer.install("record")
    try:
        assert torch.cuda.set_stream.keys_in_place
        side = torch.cuda.Stream()

        def enter_and_leave() -> None:
            with torch.cuda.stream(side):  # leaves through a new current_stream() object
                pass

        for _ in range(8):  # the first switches load CUDA's libraries (ctypes objects, once)
            enter_and_leave()
        added = young_objects_added(enter_and_leave, LENGTH)
        book = installer.current_auditor().book
        entered, left = book._log[-2], book._log[-1]
        main = torch.cuda.current_stream()
        elsewhere = book.made_current_elsewhere(
            StreamRef(side.device_index, side.stream_id, side.cuda_stream), thread_ident=0)
    finally:
        installer.uninstall()
    assert entered[0] == (side.device_index, side.stream_id, side.device_type,
                          torch.cuda.Stream)
    assert left[0][:2] == (main.device_index, main.stream_id)
    assert abs(added) <= 16, added  # kept, the 128 streams the contexts left through
    assert elsewhere is not None and elsewhere.stream.handle == side.cuda_stream
