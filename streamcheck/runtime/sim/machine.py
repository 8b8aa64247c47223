"""The simulated machine: devices, streams as lazy queues, events, and the scheduler."""

from __future__ import annotations

import itertools
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamcheck.runtime.reader import StreamKey, StreamReader


@dataclass(eq=False)
class SimOp:
    """One queued piece of device work."""

    seq: int
    label: str
    run: Callable[[], None]
    reads: tuple[Any, ...] = ()
    writes: tuple[Any, ...] = ()
    waits_for: SimEventMark | None = None
    marks: SimEventMark | None = None


@dataclass(eq=False)
class SimEventMark:
    """A position in a stream that an event recorded; ``done`` once the stream reached it."""

    stream: SimStreamState
    done: bool = False


@dataclass(eq=False)
class SimStreamState:
    """The machine-side state of one stream: its device, id and pending ops."""

    device: int
    stream_id: int
    handle: int
    queue: deque[SimOp] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)  # queue edits only: short
    exec_lock: threading.RLock = field(default_factory=threading.RLock)  # held while running


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.device = 0
        self.current: dict[int, SimStreamState] = {}


class SimMachine:
    """Devices, streams and the lazy scheduler shared by every simulated process view."""

    def __init__(self, device_count: int = 2, seed: int = 0) -> None:
        if device_count < 1:
            raise ValueError("a simulated machine needs at least one device")
        self.device_count = device_count
        self.rng = random.Random(seed)
        self.thread = _ThreadState()
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._streams: list[SimStreamState] = []
        self.default_streams = [self.new_stream(d, stream_id=0) for d in range(device_count)]
        self._reader = StreamReader(self.current_stream_tuple, self.current_device, name="sim",
                                    current_raw_stream=self.current_raw_stream,
                                    event_device=_event_device, event_stream=_event_stream,
                                    event_thread_device=_event_thread_device)

    # ---- streams ---------------------------------------------------------------------------

    def new_stream(self, device: int, stream_id: int | None = None) -> SimStreamState:
        self.check_device(device)
        sid = next(self._ids) if stream_id is None else stream_id
        handle = 0 if sid == 0 else 0x7F0000000000 + (device << 20) + sid * 0x100
        state = SimStreamState(device=device, stream_id=sid, handle=handle)
        with self._lock:
            self._streams.append(state)
        return state

    def check_device(self, device: int) -> None:
        if not 0 <= device < self.device_count:
            raise ValueError(
                f"sim device {device} does not exist (this machine has {self.device_count})"
            )

    def current_stream(self, device: int | None = None) -> SimStreamState:
        dev = self.thread.device if device is None else device
        self.check_device(dev)
        return self.thread.current.get(dev) or self.default_streams[dev]

    # ---- what the audit reads: the StreamReader interface both runtimes provide -----------

    def current_device(self) -> int:
        """The calling thread's current device."""
        return self.thread.device

    def current_stream_tuple(self, device: int) -> tuple[int, int, int]:
        """The calling thread's current stream on ``device`` in the shape of
        ``torch._C._cuda_getCurrentStream``: (stream id, device, device type)."""
        state = self.current_stream(device)
        return (state.stream_id, state.device, 1)

    def current_raw_stream(self, device: int) -> int:
        """The calling thread's current stream's handle on ``device`` (``cuda_stream``)."""
        return self.current_stream(device).handle

    def stream_reader(self) -> StreamReader:
        """The audit's reader of this machine's per-thread truth (events: their own
        machine's, since one ``SimEvent`` class serves every machine)."""
        return self._reader

    # ---- queueing and running --------------------------------------------------------------

    def enqueue(self, stream: SimStreamState, label: str, run: Callable[[], None],
                reads: tuple[Any, ...] = (), writes: tuple[Any, ...] = (),
                waits_for: SimEventMark | None = None, marks: SimEventMark | None = None) -> None:
        op = SimOp(next(self._seq), label, run, reads, writes, waits_for, marks)
        with stream.lock:
            stream.queue.append(op)

    def _run_head(self, stream: SimStreamState) -> None:
        """Run the op at the head of ``stream``; enqueueing never waits for this (as in CUDA)."""
        with stream.exec_lock:
            with stream.lock:
                if not stream.queue:
                    return
                op = stream.queue[0]
            if op.waits_for is not None and not op.waits_for.done:
                self.run_until(op.waits_for)
            with stream.lock:
                stream.queue.popleft()
            op.run()
            if op.marks is not None:
                op.marks.done = True

    def run_until(self, mark: SimEventMark) -> None:
        while not mark.done:
            if not mark.stream.queue:
                mark.done = True
                return
            self._run_head(mark.stream)

    def drain(self, stream: SimStreamState) -> None:
        """Run one stream to empty (what ``stream.synchronize()`` waits for)."""
        while stream.queue:
            self._run_head(stream)

    def synchronize(self, device: int | None = None) -> None:
        """Run every stream (of one device) to empty, in the most adversarial legal order."""
        while True:
            with self._lock:
                busy = [s for s in self._streams
                        if s.queue and (device is None or s.device == device)]
            if not busy:
                return
            self._run_head(self._pick(busy))

    def _pick(self, busy: list[SimStreamState]) -> SimStreamState:
        """The stream whose next op races the most with earlier ops queued elsewhere: it reads
        memory they have yet to write, or writes memory they have yet to read or write. Memory
        is matched by address, so a block view and another view of the same block collide."""
        def hazard(s: SimStreamState) -> int:
            head = s.queue[0]
            earlier = [op for other in busy if other is not s
                       for op in other.queue if op.seq < head.seq]
            unwritten = {_address(t) for op in earlier for t in op.writes}
            unread = {_address(t) for op in earlier for t in op.reads}
            return (sum(1 for t in head.reads if _address(t) in unwritten)
                    + sum(1 for t in head.writes if _address(t) in unwritten | unread))

        scores = [(hazard(s), s) for s in busy]
        best = max(score for score, _ in scores)
        ties = [s for score, s in scores if score == best]
        return ties[0] if len(ties) == 1 else self.rng.choice(ties)


def _address(tensor: Any) -> int:
    """Where a (simulated) tensor's memory starts: views of one block share it."""
    data = getattr(tensor, "data", None)
    return int(data.data_ptr()) if data is not None else id(tensor)


def _event_stream(event: Any, stream: Any) -> StreamKey:
    return event.stream_key(stream)  # a SimEvent: (device, stream id) on its own machine


def _event_thread_device(event: Any) -> int:
    return event.thread_device


def _event_device(event: Any) -> int | None:
    return event.device_index
