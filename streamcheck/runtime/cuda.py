"""The calling thread's real CUDA truths, read cheaply: its current device and current stream.

``torch.cuda.current_stream()`` builds a Python Stream object (~4 µs a call, measured on
H200); ``torch._C._cuda_getCurrentStream(device)`` returns the same per-thread answer as a tuple
(stream id, device, device type) in ~110 ns, and ``torch._C._cuda_getDevice()`` the thread's
current device. The audit reads these at every launch through :func:`stream_reader`.

A process whose ``torch.cuda`` is the CPU simulator (``streamcheck doctor``'s probe child, the
CPU tests over vLLM's real code) has no such C++ state: the simulator installs its own reader
with :func:`use_reader`, and every wrapper made afterwards reads the simulated truth. Both are
:class:`~streamcheck.runtime.reader.StreamReader` objects.
"""

from __future__ import annotations

from collections.abc import Callable

from streamcheck.runtime.reader import CurrentStreamTuple, StreamReader

__all__ = ["CurrentStreamTuple", "StreamReader", "cuda_available", "current_stream_of",
           "device_count", "stream_reader", "use_reader"]

_override: StreamReader | None = None

#: The installed reader's ``current_stream`` (None: torch's C read), what
#: :func:`current_stream_of` calls. Compiled callers read it here at each call and call it
#: directly, or torch's read where it is None (``HandoffDeclare``, streamcheck/_handoffs.c):
#: a Python frame and an import fewer than :func:`current_stream_of` for every handoff.
current_read: Callable[[int], CurrentStreamTuple] | None = None


def use_reader(reader: StreamReader | None) -> None:
    """Read streams through ``reader`` from now on (None: back to torch's C++ state)."""
    global _override, current_read
    _override = reader
    current_read = None if reader is None else reader.current_stream


def stream_reader() -> StreamReader | None:
    """The reader for this process, or None when torch has no CUDA (a CPU build)."""
    if _override is not None:
        return _override
    try:
        import torch
    except ImportError:
        return None
    current = getattr(torch._C, "_cuda_getCurrentStream", None)
    device = getattr(torch._C, "_cuda_getDevice", None)
    if current is None or device is None:
        return None
    return StreamReader(current, device,
                        current_raw_stream=getattr(torch._C, "_cuda_getCurrentRawStream", None))


def current_stream_of(device: int) -> CurrentStreamTuple:
    """The calling thread's current stream on ``device``, (stream id, device, device type):
    through the reader :func:`use_reader` installed, else torch's C read, called directly.
    For a path that asks at every call (``streamcheck.launch``), where building a reader with
    :func:`stream_reader` would cost more than the read (about 1.5 us against 0.1)."""
    read = current_read
    if read is not None:
        return read(device)
    import torch

    read = getattr(torch._C, "_cuda_getCurrentStream", None)
    if read is None:
        raise RuntimeError("torch has no CUDA in this build")
    return read(device)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def device_count() -> int:
    if not cuda_available():
        return 0
    import torch

    return int(torch.cuda.device_count())
