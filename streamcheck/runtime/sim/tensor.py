"""``SimTensor``: a device tensor whose every op is queued on the thread's current stream.

Values are computed with small CPU torch tensors when the op finally runs. New memory is
poisoned with NaN, so any read that is not ordered after the write that fills it shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from streamcheck.runtime.reader import StreamReader
from streamcheck.runtime.sim.machine import SimMachine


class SimTensor:
    def __init__(self, machine: SimMachine, device: int, shape: tuple[int, ...],
                 dtype: torch.dtype = torch.float32) -> None:
        self._machine = machine
        self.device_index = device
        self.data = torch.full(shape, float("nan"), dtype=dtype)  # poisoned until written

    # ---- plumbing --------------------------------------------------------------------------

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> str:
        return f"sim:{self.device_index}"

    def numel(self) -> int:
        return self.data.numel()

    # ---- what the audit reads (torch's names, and the machine's stream reader) -------------

    def get_device(self) -> int:
        return self.device_index

    def data_ptr(self) -> int:
        return int(self.data.data_ptr())

    def stream_reader(self) -> StreamReader:
        """The audit's reader of this tensor's machine (its current streams)."""
        return self._machine.stream_reader()

    def _new(self, shape: tuple[int, ...] | torch.Size) -> SimTensor:
        return SimTensor(self._machine, self.device_index, tuple(shape), self.dtype)

    def _queue(self, label: str, fn: Callable[[], None], reads: tuple[SimTensor, ...],
               writes: tuple[SimTensor, ...]) -> None:
        for t in (*reads, *writes):
            if t.device_index != self.device_index:
                raise RuntimeError(
                    f"sim: {label} mixes tensors of sim:{self.device_index} "
                    f"and sim:{t.device_index}"
                )
        stream = self._machine.current_stream(self.device_index)
        self._machine.enqueue(stream, label, fn, reads=reads, writes=writes)

    def _unary(self, label: str, fn: Callable[[torch.Tensor], torch.Tensor],
               shape: tuple[int, ...] | torch.Size | None = None) -> SimTensor:
        out = self._new(self.shape if shape is None else shape)

        def run() -> None:
            out.data.copy_(fn(self.data))

        self._queue(label, run, (self,), (out,))
        return out

    # ---- the ops repros use ----------------------------------------------------------------

    def __matmul__(self, other: SimTensor) -> SimTensor:
        out = self._new((self.shape[0], other.shape[1]))

        def run() -> None:
            torch.matmul(self.data, other.data, out=out.data)

        self._queue("matmul", run, (self, other), (out,))
        return out

    def __mul__(self, k: float) -> SimTensor:
        return self._unary("mul", lambda d: d * k)

    __rmul__ = __mul__

    def __add__(self, other: SimTensor | float) -> SimTensor:
        if isinstance(other, SimTensor):
            out = self._new(self.shape)

            def run() -> None:
                torch.add(self.data, other.data, out=out.data)

            self._queue("add", run, (self, other), (out,))
            return out
        return self._unary("add", lambda d: d + other)

    def tanh(self) -> SimTensor:
        return self._unary("tanh", torch.tanh)

    def sum(self) -> SimTensor:
        return self._unary("sum", lambda d: d.sum(), shape=())

    def isnan(self) -> SimTensor:
        return self._unary("isnan", lambda d: d.isnan().to(d.dtype))

    def any(self) -> SimTensor:
        return self._unary("any", lambda d: (d != 0).any().to(d.dtype), shape=())

    def fill_(self, value: float) -> SimTensor:
        def run() -> None:
            self.data.fill_(value)

        self._queue("fill", run, (), (self,))
        return self

    def copy_(self, src: SimTensor, non_blocking: bool = False) -> SimTensor:
        def run() -> None:
            self.data.copy_(src.data)

        self._queue("copy", run, (src,), (self,))
        return self

    def clone(self) -> SimTensor:
        return self._unary("clone", lambda d: d.clone())

    def __getitem__(self, index: Any) -> SimTensor:
        view = SimTensor.__new__(SimTensor)
        view._machine = self._machine
        view.device_index = self.device_index
        view.data = self.data[index]  # a view: writes through, like a CUDA tensor view
        return view

    # ---- host reads: wait for the current stream, as CUDA's copy-to-host does -------------

    def cpu(self) -> torch.Tensor:
        self._machine.drain(self._machine.current_stream(self.device_index))
        return self.data.clone()

    def item(self) -> float:
        return float(self.cpu().item())

    def __repr__(self) -> str:
        return f"SimTensor(shape={tuple(self.shape)}, device={self.device})"


class SimTensors:
    """Factories bound to one machine (the ``torch.randn(..., device=...)`` stand-ins)."""

    def __init__(self, machine: SimMachine, seed: int = 0) -> None:
        self._machine = machine
        self._gen = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int, device: int | None = None, scale: float = 1.0) -> SimTensor:
        dev = self._machine.thread.device if device is None else device
        out = SimTensor(self._machine, dev, tuple(shape))
        values = torch.randn(*shape, generator=self._gen) * scale

        def run() -> None:
            out.data.copy_(values)

        out._queue("randn", run, (), (out,))
        return out

    def empty_like(self, t: SimTensor) -> SimTensor:
        return t._new(t.shape)

    def zeros(self, *shape: int, device: int | None = None) -> SimTensor:
        dev = self._machine.thread.device if device is None else device
        return SimTensor(self._machine, dev, tuple(shape)).fill_(0.0)
