"""The stream-reader interface: what the audit's hooks read from a runtime, and nothing else.

Both runtimes provide one: :func:`streamcheck.runtime.cuda.stream_reader` (torch's C++ state,
read without building Python objects) and :meth:`streamcheck.runtime.sim.SimCuda.stream_reader`
(the simulator's per-thread truth). The installer hands a reader to the hooks, so no hook
reaches into a runtime's internals (a simulated event's machine, a communicator's accessor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CurrentStreamTuple = tuple[int, int, int]
"""The calling thread's real current stream on a device: (stream id, device, device type)."""

StreamKey = tuple[int, int]
"""(device, stream id)."""


def torch_event_device(event: Any) -> int | None:
    """The device a CUDA event is bound to (at its first record), or None before that."""
    return getattr(getattr(event, "device", None), "index", None)


@dataclass(frozen=True)
class StreamReader:
    """``current_stream(device) -> (stream id, device, device type)``; ``current_device()``;
    ``current_raw_stream(device) -> handle`` (the ``cudaStream_t``, what a stream object's
    ``cuda_stream`` says): one integer, read faster than the tuple, which lets a launch on the
    thread's own current stream be told apart with one comparison (None: not offered).

    For events: ``event_device(event)``, the device an event is bound to (None before its
    first record); ``event_stream(event, stream or None)``, the (device, stream id) an
    ``Event.record``/``wait`` applies to, and ``event_thread_device(event)``, the calling
    thread's current device as the event's runtime sees it. The last two are given by a runtime
    whose answer depends on the event (the simulator: each event belongs to a machine); None
    means "read through ``current_stream``/``current_device``", which the hooks then call
    directly (no Python frame in between). ``event_takes_stream_device``: an event is bound
    by its first record to the recording stream's device, which ``event_device`` then reports
    (torch's rule): the compiled hooks bind first records themselves only where it holds."""

    current_stream: Callable[[int], CurrentStreamTuple]
    current_device: Callable[[], int]
    name: str = "cuda"
    current_raw_stream: Callable[[int], int] | None = None
    event_device: Callable[[Any], int | None] = torch_event_device
    event_stream: Callable[[Any, Any], StreamKey] | None = None
    event_thread_device: Callable[[Any], int] | None = None
    event_takes_stream_device: bool = True

    def event_stream_key(self) -> Callable[[Any, Any], StreamKey]:
        """(event, stream or None) -> the (device, stream id) the call applies to."""
        if self.event_stream is not None:
            return self.event_stream
        current_stream, current_device = self.current_stream, self.current_device

        def key(_event: Any, stream: Any) -> StreamKey:
            if stream is not None:
                return (int(stream.device_index), int(stream.stream_id))
            sid, dev, _ = current_stream(current_device())
            return (int(dev), int(sid))

        return key
