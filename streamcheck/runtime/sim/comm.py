"""A simulated NCCL communicator with pynccl's calling convention (``stream=None`` → accessor).

Like NCCL, it checks the tensor's device but not the stream's at the call; launching on a stream
of another device fails with CUDA error 400 'invalid resource handle', and the peers that did
launch then wait for the missing rank forever (the runner's timeout must dump and kill them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from streamcheck.runtime.sim.machine import SimMachine
from streamcheck.runtime.sim.tensor import SimTensor


class SimCudaError(RuntimeError):
    """What NCCL reports for a failed CUDA call: ``Cuda failure 400 'invalid resource handle'``."""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"Cuda failure {code} '{text}'")


class SimCommGroup:
    """The rendezvous every rank's collective joins, one round per call."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._cond = threading.Condition()
        self._rounds: dict[int, dict[int, Any]] = {}
        self._results: dict[int, Any] = {}

    def all_reduce(self, round_no: int, rank: int, value: Any) -> Any:
        with self._cond:
            contributions = self._rounds.setdefault(round_no, {})
            contributions[rank] = value.clone()
            if len(contributions) == self.world_size:
                total = sum(contributions[r] for r in sorted(contributions))
                self._results[round_no] = total
                self._cond.notify_all()
            while round_no not in self._results:
                self._cond.wait()  # no timeout: a missing peer hangs this rank, as in NCCL
            return self._results[round_no]


class SimCommunicator:
    """One rank's communicator; ``current_stream`` is the accessor used when stream is None."""

    def __init__(self, group: SimCommGroup, rank: int, device: int, machine: SimMachine,
                 current_stream: Callable[[], Any]) -> None:
        self.group = group
        self.rank = rank
        self.world_size = group.world_size
        self.device_index = device
        self.machine = machine
        self._current_stream = current_stream
        self._round = 0
        self.launches = 0

    def all_reduce(self, tensor: SimTensor, out: SimTensor | None = None, op: str = "sum",
                   stream: Any = None) -> SimTensor:
        if stream is None:
            stream = self._current_stream()
        if tensor.device_index != self.device_index:
            raise ValueError(
                f"this communicator is on sim:{self.device_index}, the tensor on {tensor.device}"
            )
        if op != "sum":
            raise ValueError("the sim communicator supports op='sum' only")
        self.launches += 1
        if stream.device_index != self.device_index:
            raise SimCudaError(400, "invalid resource handle")
        out = out if out is not None else SimTensor(self.machine, self.device_index,
                                                    tuple(tensor.shape), tensor.dtype)
        self._round += 1
        round_no = self._round
        group, rank = self.group, self.rank

        def run() -> None:
            out.data.copy_(group.all_reduce(round_no, rank, tensor.data))

        self.machine.enqueue(stream._state, "all_reduce", run, reads=(tensor,), writes=(out,))
        return out
