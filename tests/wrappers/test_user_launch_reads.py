"""``streamcheck.launch`` and ``streamcheck.handoff`` on CUDA-shaped objects read the thread's
current stream through torch's C read (or the reader the simulator installed), once a call,
without building a reader: what they read must decide the launch."""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import pytest
import torch

import streamcheck
from streamcheck import installer
from streamcheck.runtime import cuda as cuda_runtime
from streamcheck.runtime.reader import StreamReader
from streamcheck.wrappers import speedups

SIDE = SimpleNamespace(device_index=0, stream_id=5, cuda_stream=0x7F05)


class FakeTensor:
    """A CUDA-shaped tensor: a device and an address, no simulator reader."""

    def get_device(self) -> int:
        return 0

    def data_ptr(self) -> int:
        return 0x1000


@pytest.fixture
def torch_current(monkeypatch):
    """torch's C read of the current stream, answering ``state["sid"]`` on any device."""
    state = {"sid": 5, "reads": 0}

    def read(device):
        state["reads"] += 1
        return (state["sid"], device, 1)

    monkeypatch.setattr(torch._C, "_cuda_getCurrentStream", read, raising=False)
    aud = installer.install("assert")
    yield aud, state
    installer.uninstall()


def test_a_launch_reads_the_current_stream_once_and_is_counted(torch_current):
    aud, state = torch_current
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "cannot audit" would be a warning
        with streamcheck.launch("kv.load", stream=SIDE, device=0):
            pass
    assert state["reads"] == 1
    assert aud.coverage.launches_by_op()["kv.load"] == 1


def test_a_handoff_on_the_current_stream_is_declared_there(torch_current):
    """The default stream is the thread's current one: the handoff names it, and a read on
    another stream that never waited for it is a finding."""
    _aud, state = torch_current
    made = streamcheck.handoff(FakeTensor())
    assert made is not None and made.stream.key == (0, 5)
    state["sid"] = 7  # the reading thread's current stream is SIDE's neighbour
    other = SimpleNamespace(device_index=0, stream_id=7, cuda_stream=0x7F07)
    with (pytest.raises(streamcheck.StreamHazardError, match="unsynced-handoff"),
          streamcheck.launch("kv.save", stream=other, device=0, reads=[made])):
        pass


def test_the_installed_reader_comes_first(torch_current):
    _aud, state = torch_current
    cuda_runtime.use_reader(StreamReader(current_stream=lambda d: (9, d, 1),
                                         current_device=lambda: 0))
    try:
        made = streamcheck.handoff(FakeTensor())
    finally:
        cuda_runtime.use_reader(None)
    assert made.stream.key == (0, 9) and state["reads"] == 0


@pytest.mark.parametrize("core", ["python", pytest.param("compiled", marks=pytest.mark.skipif(
    not speedups.built(), reason="streamcheck._speedups is not built here"))])
def test_a_handoff_reads_through_the_reader_in_place_at_its_call(core, monkeypatch):
    """Each handoff asks the reader installed at that moment, or torch's read as it is then
    (the compiled handoff calls them itself, without ``current_stream_of``'s frame): a reader
    installed or taken away, or torch's read replaced, between two handoffs is followed."""
    monkeypatch.setenv("STREAMCHECK_CORE", core)
    callers = []

    def reading(sid):
        def read(device):
            callers.append(sys._getframe(1).f_code.co_name)
            return (sid, device, 1)
        return read

    monkeypatch.setattr(torch._C, "_cuda_getCurrentStream", reading(5), raising=False)
    installer.install("record")
    keys = []
    try:
        for sid in (9, 11, None):
            cuda_runtime.use_reader(None if sid is None else StreamReader(
                current_stream=reading(sid), current_device=lambda: 0))
            keys.append(streamcheck.handoff(FakeTensor()).stream.key)
        monkeypatch.setattr(torch._C, "_cuda_getCurrentStream", reading(6))
        keys.append(streamcheck.handoff(FakeTensor()).stream.key)
    finally:
        cuda_runtime.use_reader(None)
        installer.uninstall()
        speedups.use("auto")
    assert keys == [(0, 9), (0, 11), (0, 5), (0, 6)]
    # the compiled handoff calls the read itself; the Python one through current_stream_of
    assert callers == 4 * (["handoff"] if core == "compiled" else ["current_stream_of"])
