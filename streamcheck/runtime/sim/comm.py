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

    def send(self, key: tuple[int, int, int], value: Any) -> None:
        """Deposit for the matching recv, then wait until it is taken (NCCL's send blocks)."""
        with self._cond:
            self._rounds.setdefault(-1, {})[key] = value.clone()
            self._cond.notify_all()
            while key in self._rounds[-1]:
                self._cond.wait()

    def recv(self, key: tuple[int, int, int]) -> Any:
        with self._cond:
            while key not in self._rounds.get(-1, {}):
                self._cond.wait()  # no timeout: a sender that never launched hangs us
            value = self._rounds[-1].pop(key)
            self._cond.notify_all()
            return value

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
        self.current_stream = current_stream  # the accessor: public, the audit resolves by it
        self._round = 0
        self._p2p: dict[tuple[int, int], int] = {}
        self.launches = 0

    def all_reduce(self, tensor: SimTensor, out: SimTensor | None = None, op: str = "sum",
                   stream: Any = None) -> SimTensor:
        if stream is None:
            stream = self.current_stream()
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

    def _p2p_launch(self, tensor: SimTensor, stream: Any, peer: int) -> tuple[Any, int]:
        if stream is None:
            stream = self.current_stream()
        if tensor.device_index != self.device_index:
            raise ValueError(
                f"this communicator is on sim:{self.device_index}, the tensor on {tensor.device}"
            )
        if not 0 <= peer < self.world_size or peer == self.rank:
            raise ValueError(f"peer {peer} is not another rank of a world of {self.world_size}")
        self.launches += 1
        if stream.device_index != self.device_index:
            raise SimCudaError(400, "invalid resource handle")
        return stream, peer

    def send(self, tensor: SimTensor, dst: int, stream: Any = None) -> None:
        stream, dst = self._p2p_launch(tensor, stream, dst)
        seq = self._p2p[(self.rank, dst)] = self._p2p.get((self.rank, dst), 0) + 1
        group, key = self.group, (self.rank, dst, seq)
        self.machine.enqueue(stream._state, "send", lambda: group.send(key, tensor.data),
                             reads=(tensor,))

    def recv(self, tensor: SimTensor, src: int, stream: Any = None) -> None:
        stream, src = self._p2p_launch(tensor, stream, src)
        seq = self._p2p[(src, self.rank)] = self._p2p.get((src, self.rank), 0) + 1
        group, key = self.group, (src, self.rank, seq)

        def run() -> None:
            tensor.data.copy_(group.recv(key))

        self.machine.enqueue(stream._state, "recv", run, writes=(tensor,))
