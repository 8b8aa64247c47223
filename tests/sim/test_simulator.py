"""The simulator models what the hazards need, deterministically."""

from __future__ import annotations

import math
import threading

import pytest

from streamcheck.runtime.sim import SimCommGroup, SimCommunicator, SimCuda, SimCudaError, SimMachine
from streamcheck.runtime.sim.tensor import SimTensors


def setup(devices=2, seed=0):
    m = SimMachine(devices, seed)
    return m, SimCuda(m), SimTensors(m, seed)


def test_fresh_thread_starts_on_device0_default_stream():
    _, api, _ = setup()
    api.set_device(1)
    api.set_stream(api.Stream())
    seen = {}

    def fresh():
        seen["device"] = api.current_device()
        seen["stream"] = api.current_stream()

    t = threading.Thread(target=fresh)
    t.start()
    t.join()
    assert seen["device"] == 0 and seen["stream"].stream_id == 0
    assert api.current_device() == 1 and api.current_stream().stream_id != 0


def test_stream_created_in_thread_lands_on_thread_device():
    _, api, _ = setup()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("s", api.Stream()))
    t.start()
    t.join()
    api.set_device(1)
    assert box["s"].device_index == 0 and api.Stream().device_index == 1


def test_unordered_read_sees_poison_and_ordered_read_does_not():
    _, api, T = setup()
    x = T.randn(4, 4)
    y = x @ x
    side = api.Stream()
    out = T.empty_like(y)
    with api.stream(side):
        out.copy_(y)  # not ordered after y on the default stream
    assert math.isnan((out * 1).sum().item())  # read on default stream, side never ran
    out2 = T.empty_like(y)
    ev = api.Event()
    ev.record()  # on the default stream, after y
    with api.stream(side):
        side.wait_event(ev)
        out2.copy_(y)
    done = api.Event()
    done.record(side)
    done.wait()  # default stream waits for side
    assert not math.isnan((out2 * 1).sum().item())


def test_deterministic_across_runs():
    def run(seed, ordered):
        _, api, T = setup(seed=seed)
        x = T.randn(3, 3)
        ready = api.Event()
        ready.record()
        s = api.Stream()
        with api.stream(s):
            if ordered:
                s.wait_event(ready)
            y = x.tanh()
        api.synchronize()
        return [[repr(v) for v in row] for row in y.cpu().tolist()]

    assert run(5, True) == run(5, True)
    assert run(5, True) != run(6, True)
    # the adversarial schedule runs the unordered read first, every time
    assert run(5, False) == run(5, False) == [["nan"] * 3] * 3


def test_comm_on_other_device_stream_is_error_400_and_peer_hangs():
    m, api, T = setup()
    group = SimCommGroup(2)
    box = {}

    def rank(r):
        api.set_device(r)
        comm = SimCommunicator(group, r, r, m, current_stream=api.current_stream)
        x = T.randn(2, 2)
        try:
            stream = m.default_streams[0] if r == 1 else None
            wrapped = api.default_stream(0) if stream is not None else None
            out = comm.all_reduce(x, stream=wrapped)
            box[r] = ("launched", out)
            api.synchronize()
            box[r] = ("done", out)
        except SimCudaError as exc:
            box[r] = ("error", exc)

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(2)]
    for t in threads:
        t.start()
    threads[1].join(5)
    threads[0].join(1)
    assert box[1][0] == "error" and "Cuda failure 400 'invalid resource handle'" in str(box[1][1])
    assert threads[0].is_alive() and box[0][0] == "launched"  # rank 0 waits for rank 1 forever


def test_bad_device_is_a_clear_error():
    _, api, _ = setup(devices=2)
    with pytest.raises(ValueError, match="sim device 5 does not exist"):
        api.set_device(5)
