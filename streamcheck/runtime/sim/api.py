"""``SimCuda``: a ``torch.cuda``-shaped namespace over a :class:`SimMachine`.

One instance stands for one process's view of the machine (its own ``torch.cuda`` module), so
code that monkey-patches ``set_stream`` on it, as legacy vLLM did on ``torch.cuda``, patches
that process only. ``stream()`` looks ``set_stream`` up on the namespace at call time, as
``torch.cuda.StreamContext`` does, so such patches see every context entry.
"""

from __future__ import annotations

from typing import Any

from streamcheck.runtime.reader import StreamKey, StreamReader
from streamcheck.runtime.sim.machine import SimEventMark, SimMachine, SimStreamState


class SimStreamBase:
    """A stream handle (``torch.cuda.Stream`` stand-in)."""

    def __init__(self, state: SimStreamState, machine: SimMachine) -> None:
        self._state = state
        self._machine = machine

    def stream_reader(self) -> StreamReader:
        """The audit's reader of this stream's machine."""
        return self._machine.stream_reader()

    @property
    def device_index(self) -> int:
        return self._state.device

    @property
    def stream_id(self) -> int:
        return self._state.stream_id

    @property
    def cuda_stream(self) -> int:
        return self._state.handle

    @property
    def device(self) -> str:
        return f"sim:{self._state.device}"

    def synchronize(self) -> None:
        self._machine.drain(self._state)

    def wait_event(self, event: SimEvent) -> None:
        event.wait(self)

    def record_event(self, event: SimEvent | None = None) -> SimEvent:
        event = event if event is not None else SimEvent(self._machine)
        event.record(self)
        return event

    def wait_stream(self, stream: SimStreamBase) -> None:
        """Order this stream after everything queued on ``stream`` so far (as torch does: an
        event recorded there, waited on here)."""
        self.wait_event(stream.record_event())

    def __enter__(self) -> SimStreamBase:
        """Like ``torch.Stream.__enter__``: switches in C++, NOT through ``set_stream``.

        Caches that only see ``set_stream`` go stale inside such a block.
        """
        thread = self._machine.thread
        self._entered = (thread.device, thread.current.get(self._state.device))
        thread.current[self._state.device] = self._state
        thread.device = self._state.device
        return self

    def __exit__(self, *exc: Any) -> None:
        device, previous = self._entered
        thread = self._machine.thread
        if previous is None:
            thread.current.pop(self._state.device, None)
        else:
            thread.current[self._state.device] = previous
        thread.device = device

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SimStreamBase) and other._state is self._state

    def __hash__(self) -> int:
        return hash((self._state.device, self._state.stream_id))

    def __repr__(self) -> str:
        return (f"<sim.Stream device=sim:{self.device_index} "
                f"cuda_stream={self.cuda_stream:#x}>")


class SimEvent:
    """An event: ``record`` marks a stream position, ``wait`` orders another stream after it."""

    def __init__(self, machine: SimMachine) -> None:
        self._machine = machine
        self._mark: SimEventMark | None = None
        self.device_index: int | None = None  # bound at the first record, as CUDA's are

    def record(self, stream: SimStreamBase | None = None) -> None:
        state = stream._state if stream is not None else self._machine.current_stream()
        if self.device_index is None:
            self.device_index = state.device
        elif state.device != self.device_index:  # PyTorch's own check (its words, 2.x)
            raise RuntimeError(f"Event device index {self.device_index} does not match "
                               f"recording stream's device index {state.device}.")
        mark = SimEventMark(state)
        self._machine.enqueue(state, "event.record", lambda: None, marks=mark)
        self._mark = mark

    def wait(self, stream: SimStreamBase | None = None) -> None:
        if self._mark is None:
            return  # waiting on a never-recorded event is a no-op in CUDA too
        state = stream._state if stream is not None else self._machine.current_stream()
        self._machine.enqueue(state, "event.wait", lambda: None, waits_for=self._mark)

    def synchronize(self) -> None:
        if self._mark is not None:
            self._machine.run_until(self._mark)

    def query(self) -> bool:
        return self._mark is None or self._mark.done

    # ---- what the audit reads (the simulator's side of the StreamReader interface) ----------

    def stream_key(self, stream: SimStreamBase | None = None) -> StreamKey:
        """The (device, stream id) ``record(stream)`` or ``wait(stream)`` applies to: the
        given stream, or the calling thread's current one on this event's machine."""
        state = stream._state if stream is not None else self._machine.current_stream()
        return (state.device, state.stream_id)

    @property
    def thread_device(self) -> int:
        """The calling thread's current device on this event's machine."""
        return self._machine.thread.device


class SimStreamContext:
    """``torch.cuda.StreamContext`` stand-in: switches via the namespace's ``set_stream``."""

    def __init__(self, api: SimCuda, stream: SimStreamBase | None) -> None:
        self._api = api
        self.stream = stream
        self._prev: SimStreamBase | None = None

    def __enter__(self) -> SimStreamBase | None:
        if self.stream is None:
            return None
        self._prev = self._api.current_stream(self.stream.device_index)
        self._api.set_stream(self.stream)
        return self.stream

    def __exit__(self, *exc: Any) -> None:
        if self.stream is not None and self._prev is not None:
            self._api.set_stream(self._prev)


class SimCuda:
    """The namespace repros and wrappers use where they would use ``torch.cuda``."""

    def __init__(self, machine: SimMachine) -> None:
        self.machine = machine
        api = self

        class Stream(SimStreamBase):
            """Created on the calling thread's current device (or ``device=``)."""

            def __init__(self, device: int | None = None, priority: int = 0) -> None:
                dev = machine.thread.device if device is None else _index(device)
                super().__init__(machine.new_stream(dev), machine)

        class Event(SimEvent):
            def __init__(self, enable_timing: bool = False) -> None:
                super().__init__(machine)

        self.Stream = Stream
        self.Event = Event
        self._api = api

    # ---- torch.cuda-shaped functions -------------------------------------------------------

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self.machine.device_count

    def set_device(self, device: int) -> None:
        dev = _index(device)
        self.machine.check_device(dev)
        self.machine.thread.device = dev

    def current_device(self) -> int:
        return self.machine.thread.device

    def _wrap(self, state: SimStreamState) -> SimStreamBase:
        return SimStreamBase(state, self.machine)

    def current_stream(self, device: int | None = None) -> SimStreamBase:
        return self._wrap(self.machine.current_stream(None if device is None else _index(device)))

    def default_stream(self, device: int | None = None) -> SimStreamBase:
        dev = self.machine.thread.device if device is None else _index(device)
        return self._wrap(self.machine.default_streams[dev])

    def set_stream(self, stream: SimStreamBase | None) -> None:
        """Make ``stream`` current on its device for the calling thread, and that device current.

        ``torch.cuda.set_stream`` switches the thread's current device to the stream's, too.
        """
        if stream is None:
            return
        self.machine.thread.current[stream.device_index] = stream._state
        self.machine.thread.device = stream.device_index

    def stream(self, stream: SimStreamBase | None) -> SimStreamContext:
        return SimStreamContext(self, stream)

    def synchronize(self, device: int | None = None) -> None:
        """Wait for every stream of one device (the current one by default), as CUDA does."""
        self.machine.synchronize(self.machine.thread.device if device is None else _index(device))

    def stream_reader(self) -> StreamReader:
        """What the audit reads from this process view: the simulator's per-thread truth,
        through the same interface the CUDA runtime provides."""
        return self.machine.stream_reader()


def _index(device: Any) -> int:
    if isinstance(device, int):
        return device
    if isinstance(device, str) and ":" in device:
        return int(device.rsplit(":", 1)[1])
    index = getattr(device, "index", None)
    if isinstance(index, int):
        return index
    raise ValueError(f"cannot read a sim device index from {device!r}")
