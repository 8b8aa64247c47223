"""Stream back ends for the probes: the real CUDA runtime, or the CPU simulator.

The probes ask the same questions either way; only how a stream is made, switched and read back
differs. Each back end offers the three ways of switching that matter for vLLM's cache:

* ``stream_context(s)`` — ``torch.cuda.stream(s)``: goes through ``torch.cuda.set_stream``,
  which vLLM patches, so the cache sees it (this is how the seed leak spreads);
* ``with cpp_stream(d)`` — ``with torch.Stream(...)``: switches in C++, the cache misses it;
* ``accelerator_set_stream(s)`` — ``torch.accelerator.set_stream``: also switches in C++.

``real_current_stream()`` is torch's per-thread truth, which the cache is compared against.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol


class Unsupported(RuntimeError):
    """This torch lacks a switch the probe wants to try; that part becomes "cannot tell"."""


@dataclass(frozen=True)
class ObservedStream:
    """What a probe saw a ``current_stream()`` (or a back end) return, reduced to what
    identifies a stream, so streams from different APIs compare equal.

    ``torch.Stream`` and ``torch.cuda.Stream`` objects for one CUDA stream share
    ``(device_index, stream_id)``; so do the simulator's handles. Something that is not a device
    stream (vLLM's CPU placeholder) is kept as an unknown one, with its type in ``label``.
    Not the audit's :class:`streamcheck.core.ids.StreamRef`, which names a stream the audited
    process launches on.
    """

    device: int | None
    stream_id: int | None
    label: str

    @property
    def known(self) -> bool:
        return self.device is not None and self.stream_id is not None

    def same(self, other: ObservedStream) -> bool:
        return self.known and other.known and (self.device, self.stream_id) == (
            other.device, other.stream_id)

    def __str__(self) -> str:
        return self.label


def describe(stream: Any) -> ObservedStream:
    """A readable, comparable reference; a non-stream (vLLM's CPU placeholder) stays unknown."""
    device = getattr(stream, "device_index", None)
    sid = getattr(stream, "stream_id", None)
    if not isinstance(device, int) or not isinstance(sid, int):
        return ObservedStream(None, None, f"a {type(stream).__name__} (not a device stream)")
    if sid == 0:
        return ObservedStream(device, sid, f"cuda:{device}'s default stream")
    return ObservedStream(device, sid, f"cuda:{device} stream #{sid}")


class StreamBackend(Protocol):
    """What the probes need from a back end."""

    name: str
    cpp_switch: str

    def device_count(self) -> int: ...

    def set_device(self, index: int) -> None: ...

    def current_device(self) -> int: ...

    def new_stream(self, device: int) -> Any: ...

    def cpp_stream(self, device: int) -> AbstractContextManager[Any]: ...

    def real_current_stream(self) -> Any: ...

    def stream_context(self, stream: Any) -> AbstractContextManager[Any]: ...

    def accelerator_set_stream(self, stream: Any) -> None: ...


class CudaStreams:
    """Real CUDA through the torch that vLLM sees (and has already patched)."""

    name = "cuda"
    cpp_switch = "with torch.Stream(device=...)"

    def __init__(self) -> None:
        import torch

        self._torch = torch

    def device_count(self) -> int:
        return int(self._torch.cuda.device_count())

    def set_device(self, index: int) -> None:
        self._torch.cuda.set_device(index)

    def current_device(self) -> int:
        return int(self._torch.cuda.current_device())

    def new_stream(self, device: int) -> Any:
        return self._torch.cuda.Stream(device=device)

    def cpp_stream(self, device: int) -> AbstractContextManager[Any]:
        return self._torch.Stream(device=f"cuda:{device}")

    def real_current_stream(self) -> Any:
        # Looked up on torch.cuda at call time; vLLM patches set_stream, never current_stream.
        return self._torch.cuda.current_stream()

    def stream_context(self, stream: Any) -> AbstractContextManager[Any]:
        return self._torch.cuda.stream(stream)

    def accelerator_set_stream(self, stream: Any) -> None:
        accelerator = getattr(self._torch, "accelerator", None)
        fn = getattr(accelerator, "set_stream", None)
        if fn is None:
            raise Unsupported(f"torch {self._torch.__version__} has no "
                              "torch.accelerator.set_stream")
        fn(stream)


class SimStreams:
    """The simulator, seen through a ``torch.cuda``-shaped namespace.

    In the probe child ``cuda`` is ``torch.cuda`` itself after
    :func:`streamcheck.doctor.fake_cuda.install` (so vLLM's patched ``set_stream`` runs inside
    ``stream_context``); tests pass the uninstalled namespace. ``fake.sim`` is never patched,
    so it tells the thread's real current stream.
    """

    name = "sim"
    # The simulated stream's own ``with`` switches the thread state directly, like torch.Stream.
    cpp_switch = "with torch.Stream(...)"

    def __init__(self, fake: Any, cuda: Any | None = None) -> None:
        self._fake = fake
        self._cuda = cuda if cuda is not None else fake.namespace

    # Through the namespace, as user code calls torch.cuda.set_device: a patch of it (by the
    # code under test) sees the probes' device choices too.
    def device_count(self) -> int:
        return int(self._cuda.device_count())

    def set_device(self, index: int) -> None:
        self._cuda.set_device(index)

    def current_device(self) -> int:
        return int(self._cuda.current_device())

    def new_stream(self, device: int) -> Any:
        return self._cuda.Stream(device=device)

    def cpp_stream(self, device: int) -> AbstractContextManager[Any]:
        return self._cuda.Stream(device=device)

    def real_current_stream(self) -> Any:
        return self._fake.sim.current_stream()

    def stream_context(self, stream: Any) -> AbstractContextManager[Any]:
        return self._cuda.stream(stream)

    def accelerator_set_stream(self, stream: Any) -> None:
        self._fake.accelerator_set_stream(stream)
