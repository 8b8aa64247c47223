"""Declared buffer accesses on the simulator: the clocks see event edges and host waits.

A write must be ordered after the buffer's earlier reads and writes on other streams; the host
waiting for the device (``synchronize``) orders everything before it, so a buffer used again
after a full synchronize (on CUDA, memory the caching allocator hands out again at the same
address) is not a race.
"""

from __future__ import annotations

import threading

import pytest

import streamcheck
from streamcheck import installer
from streamcheck.runtime.sim import SimCuda, SimMachine
from streamcheck.runtime.sim.tensor import SimTensors
from streamcheck.wrappers.user_launch import tensor_key


@pytest.fixture
def sim():
    auditor = installer.install("record")
    machine = SimMachine(1)
    api = SimCuda(machine)
    installer.instrument_sim(api)
    try:
        yield auditor, api, SimTensors(machine)
    finally:
        installer.uninstall()


def _read_then_write(api, tensors, between) -> None:
    compute, load = api.Stream(), api.Stream()
    block = tensors.randn(4, 4)
    with api.stream(compute):
        streamcheck.handoff(block, access="read")
        between(compute, load)
    with streamcheck.launch("kv.load", stream=load, device=0, writes=[block]):
        block.fill_(1.0)


def _rules(auditor) -> list[str]:
    return sorted(f.rule_id for f in auditor.findings())


def test_unordered_write_after_read_is_found(sim):
    auditor, api, tensors = sim
    _read_then_write(api, tensors, lambda compute, load: None)
    assert _rules(auditor) == ["write-after-read"]


def test_an_event_waited_on_by_the_writer_orders_it(sim):
    auditor, api, tensors = sim

    def edge(compute, load):
        event = api.Event()
        event.record()
        load.wait_event(event)

    _read_then_write(api, tensors, edge)
    assert _rules(auditor) == []


@pytest.mark.parametrize("wait", ["device", "stream", "event", "event query"])
def test_a_host_wait_orders_what_came_before_it(sim, wait):
    auditor, api, tensors = sim

    def host_wait(compute, load):
        if wait == "device":
            api.synchronize(0)
        elif wait == "stream":
            compute.synchronize()
        elif wait == "event":
            event = api.Event()
            event.record()
            event.synchronize()
        else:  # a worker polling its copy's event until the device has run it
            event = api.Event()
            event.record()
            assert not event.query()
            compute._machine.drain(compute._state)  # the device runs it; no host hook sees it
            assert event.query()

    _read_then_write(api, tensors, host_wait)
    assert _rules(auditor) == []


def test_a_passing_launch_declares_its_own_write(sim):
    auditor, api, tensors = sim
    compute, load = api.Stream(), api.Stream()
    block = tensors.randn(4, 4)
    with streamcheck.launch("kv.load", stream=load, device=0, writes=[block]):
        block.fill_(2.0)
    with api.stream(compute), streamcheck.launch("zero", stream=compute, device=0,
                                                   writes=[block]):
        block.fill_(0.0)
    assert _rules(auditor) == ["write-after-write"]


def test_an_event_recorded_after_a_wrong_set_device_is_explained_and_stopped():
    """LMCache#3493: the engine's event is bound to its device; a connector moves the thread to
    another device; the next record names the set_device call, and assert mode stops it."""
    from streamcheck.core.errors import StreamHazardError

    auditor = installer.install("assert")
    machine = SimMachine(2)
    api = SimCuda(machine)
    installer.instrument_sim(api)
    try:
        api.set_device(1)
        event = api.Event()
        event.record()  # bound to device 1
        api.set_device(0)  # the connector's set_device(local_worker_id)
        with pytest.raises(StreamHazardError) as stopped:
            event.record()
        assert stopped.value.rule_ids == ["event-device-mismatch"]
        message = auditor.findings()[0].message
        assert "made cuda:0 its current device at" in message
        assert "test_buffer_accesses.py" in message
        assert event.device_index == 1  # the record never ran
    finally:
        installer.uninstall()


def test_an_event_recorded_on_its_own_device_costs_no_finding(sim):
    auditor, api, _tensors = sim
    event = api.Event()
    event.record()
    api.set_device(0)
    event.record()
    assert _rules(auditor) == []


def _in_thread(fn):
    box: dict = {}

    def body():
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed back to the test
            box["error"] = exc

    t = threading.Thread(target=body, name="kv-sender")
    t.start()
    t.join()
    return box


def test_a_helper_threads_stream_on_device_0_is_stopped_at_its_creation():
    """vllm#39548 / Mooncake#2569: the engine works on device 1; a fresh helper thread's
    Stream() lands on device 0. assert stops the thread at the creation; a helper that binds
    its device first, or names the device, is clean."""
    from streamcheck.core.errors import StreamHazardError

    auditor = installer.install("assert")
    machine = SimMachine(2)
    api = SimCuda(machine)
    installer.instrument_sim(api)
    try:
        api.set_device(1)  # the engine thread (the main thread) chooses its rank's device
        stopped = _in_thread(api.Stream)
        assert isinstance(stopped.get("error"), StreamHazardError)
        assert stopped["error"].rule_ids == ["stream-on-unbound-device"]
        assert "never called set_device" in auditor.findings()[0].message

        def bound():
            api.set_device(1)
            return api.Stream()

        assert _in_thread(bound)["result"].device_index == 1
        assert _in_thread(lambda: api.Stream(device=1))["result"].device_index == 1
        assert _in_thread(lambda: api.Stream(device=0))["result"].device_index == 0  # named
        assert len(auditor.findings()) == 1
    finally:
        installer.uninstall()


def test_blocks_of_one_kv_tensor_are_ordered_only_against_the_same_blocks(sim):
    """A paged KV cache: the forward reads request A's blocks on the compute stream while a
    load writes request B's blocks of the same tensor on its own stream (clean); a load into
    one of A's blocks is a write-after-read, and a whole-tensor write overlaps every block."""
    auditor, api, tensors = sim
    compute, load = api.Stream(), api.Stream()
    kv = tensors.randn(8, 4)
    with api.stream(compute):
        streamcheck.handoff(streamcheck.blocks(kv, [0, 1]), access="read")
    with streamcheck.launch("kv.load", stream=load, device=0,
                            writes=[streamcheck.blocks(kv, [4, 5])]):
        pass
    assert _rules(auditor) == []
    with streamcheck.launch("kv.load", stream=load, device=0,
                            writes=[streamcheck.blocks(kv, [5, 1])]):
        pass
    assert _rules(auditor) == ["write-after-read"]
    [finding] = auditor.findings()
    assert finding.launch.writes[0].blocks == frozenset({1, 5})
    auditor.clear()
    with api.stream(compute), streamcheck.launch("zero", stream=compute, device=0,
                                                   writes=[kv]):
        pass  # the compute stream's whole-tensor write must wait for the load's blocks
    assert _rules(auditor) == ["write-after-write"]


def declare_one(tensor):
    return streamcheck.handoff(tensor)  # HANDOFF_LINE


def declare_two(first, second):
    return streamcheck.handoffs([first, streamcheck.blocks(second, [0, 2])])  # HANDOFFS_LINE


def test_a_handoff_names_the_line_that_declared_it(sim):
    """The site a report shows for a handoff starts at the call of ``streamcheck.handoff``
    (it used to start one frame further out, at the caller of the declaring function)."""
    from pathlib import Path

    from streamcheck.core.ids import frames_of

    _auditor, api, tensors = sim
    lines = Path(__file__).read_text().splitlines()
    line_of = {tag: n for n, text in enumerate(lines, 1) for tag in ("# HANDOFF_LINE",
                                                                       "# HANDOFFS_LINE")
               if text.rstrip().endswith(tag)}
    a, b = tensors.randn(4, 4), tensors.randn(4, 4)
    with api.stream(api.Stream()):
        one = declare_one(a)
        two = declare_two(a, b)
    assert frames_of(one.stack)[0][1:] == (line_of["# HANDOFF_LINE"], "declare_one")
    assert frames_of(two[0].stack)[0][1:] == (line_of["# HANDOFFS_LINE"], "declare_two")
    # one point for both: one clock tick, one site; each with its own buffer and blocks
    assert two[0].mark == two[1].mark and two[0].stack == two[1].stack
    assert (two[0].blocks, two[1].blocks) == (None, frozenset({0, 2}))
    assert two[0].tensor != two[1].tensor and two[0].stream == one.stream
    assert streamcheck.handoffs([]) == ()
    with pytest.raises(ValueError, match="access must be"):
        streamcheck.handoffs([a], access="readwrite")


def _load_then_read(api, kv, load, compute, ids, poll: bool) -> None:
    """A load of ``ids`` checked on ``load``, then the forward's read of them on ``compute``
    (ordered after the load by its event); ``poll``: the engine saw the load and its own
    forward done (the host waited for both), as a serving step does."""
    ready = api.Event()
    ready.record(compute)
    load.wait_event(ready)
    with streamcheck.launch("kv.load", stream=load, device=0,
                            writes=[streamcheck.blocks(kv, ids)]):
        pass
    done = api.Event()
    done.record(load)
    compute.wait_event(done)
    streamcheck.handoff(streamcheck.blocks(kv, ids), compute, access="read")
    if poll:
        load.synchronize()
        compute.synchronize()


def test_accesses_the_host_waited_for_are_not_kept(sim):
    """Each load and forward touches other blocks, none covering the last: without host waits
    a block access list grows to its bound; a step's host waits leave only the latest."""
    auditor, api, tensors = sim
    compute, load = api.Stream(), api.Stream()
    kv = tensors.randn(512, 4)
    key = tensor_key(kv)
    for step in range(40):
        _load_then_read(api, kv, load, compute, range(step * 4, step * 4 + 4), poll=True)
    assert len(auditor._writes[key]) + len(auditor._reads[key]) <= 2
    for step in range(40, 80):
        _load_then_read(api, kv, load, compute, range(step * 4, step * 4 + 4), poll=False)
    assert len(auditor._writes[key]) == len(auditor._reads[key]) == 40
    assert _rules(auditor) == []


def test_an_access_after_the_hosts_wait_is_still_checked(sim):
    """The host waited for the load stream up to one load; a read declared after that wait is
    kept, and a write of its blocks on another stream, unordered, is found."""
    auditor, api, tensors = sim
    compute, load = api.Stream(), api.Stream()
    kv = tensors.randn(64, 4)
    _load_then_read(api, kv, load, compute, [0, 1], poll=True)
    with api.stream(compute):
        streamcheck.handoff(streamcheck.blocks(kv, [2, 3]), access="read")
    load.synchronize()  # the host waits for the load stream, not the compute stream
    with streamcheck.launch("kv.load", stream=load, device=0,
                            writes=[streamcheck.blocks(kv, [3, 9])]):
        pass
    assert _rules(auditor) == ["write-after-read"]
