"""The host's waits on real CUDA events (``Event.synchronize``, ``Event.query``) tell the
clocks what was done, in both cores: the compiled hook reads the snapshot a real record kept.

Skipped where no CUDA device is visible; tests/wrappers/test_speedups.py checks the same
decisions on torch-shaped stand-ins everywhere.
"""

from __future__ import annotations

import pytest
import torch

import streamcheck

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_host_wait_on_a_real_event_takes_in_what_its_record_held(each_core):
    auditor = streamcheck.install("assert")
    stream = torch.cuda.Stream()
    key = (stream.device_index, stream.stream_id)
    kv = torch.zeros(1024, device="cuda")
    streamcheck.handoff(kv, stream)  # the first declared access: the clocks go live
    hooked = type(torch.cuda.Event.__dict__["synchronize"]).__name__
    assert (hooked == "GuardedCall") == (each_core == "compiled")
    assert (type(torch.cuda.Event.__dict__["query"]).__name__ == "GuardedCall") == (
        each_core == "compiled")
    event = torch.cuda.Event()
    with torch.cuda.stream(stream):
        kv.add_(1)
    event.record(stream)
    assert auditor.clocks.done_clock().get(key, 0) == 0
    event.synchronize()
    assert auditor.clocks.done_clock()[key] == 1
    streamcheck.handoff(kv, stream)
    with torch.cuda.stream(stream):
        kv.add_(1)
    event.record(stream)
    while not event.query():  # a poll that saw it done takes it in
        pass
    assert auditor.clocks.done_clock()[key] == 2
    assert auditor.findings() == []
