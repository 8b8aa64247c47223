"""The connector's host store: a pinned slab the device copies into and out of directly.

Why not a key-value backend behind a staging buffer: every block then crosses host memory
twice (device -> staging, staging -> store) and pays Python per block (a CRC, a memcpy under a
lock). End to end that ran at 1.5 GB/s on an H200 host whose copy engine does ~50. Here the
slab *is* the staging buffer: the scheduler places each block in a slot
(:mod:`streamcheck.connector.placement`), the worker gathers a layer's blocks on the device and
copies each run of consecutive slots with one asynchronous copy, and loads do the reverse.

Integrity is kept without touching the bytes on the host: a checksum of every block is computed
on the device from the gathered rows at save time (:func:`block_sums`, one pass at device
bandwidth) and kept per slot; a load computes it again on the rows that actually arrived on the
device and reports any block whose sum differs as failed (vLLM recomputes it). Each slot also
carries a tag of the key it holds, checked before a load is issued, so a block can never be
served from a slot that holds another one. What the sums guard against is accidents (a slot
mix-up, a copy that did not land, a bit flipped in host memory), not an attacker: the slab lives
in this process's own memory.

Layout: ``(planes, capacity, block bytes)``, one plane per K or V tensor of each layer, so the
blocks of one layer-plane in consecutive slots are one contiguous region.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import numpy as np
import torch

_MASK = (1 << 62) - 1


def key_tag(key: str) -> int:
    """A non-zero 62-bit tag for ``key`` (Python's own string hash: this process only)."""
    return (hash(key) & _MASK) | 1


@functools.lru_cache(maxsize=32)
def _weights(words: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(words, dtype=torch.int64, device=device) * 2 + 1).unsqueeze(0)


def block_sums(rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """One 64-bit checksum per row: the sum of its words times odd position weights.

    Integer sums wrap modulo 2**64 and do not depend on the order of addition, so the device's
    reduction and a CPU's agree bit for bit. The weights make a moved or swapped word change the
    sum; any single changed word always does (an odd weight is invertible modulo 2**64).
    """
    words = rows.reshape(rows.shape[0], -1)
    if words.dtype != torch.int64:
        words = words.to(torch.int64)
    return torch.sum(words * _weights(words.shape[1], words.device), dim=1, out=out)


def runs(slots: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(position, first slot, length)`` for each run of consecutive slots, in order."""
    out: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(slots) + 1):
        if i == len(slots) or slots[i] != slots[i - 1] + 1:
            out.append((start, slots[start], i - start))
            start = i
    return out


class HostSlab:
    """``capacity`` slots per plane of ``block_nbytes`` bytes, pinned when CUDA is present."""

    name = "host"

    def __init__(self, planes: int, capacity: int, block_nbytes: int,
                 pin_memory: bool | None = None) -> None:
        if planes < 1 or capacity < 1 or block_nbytes < 1:
            raise ValueError("planes, capacity and block_nbytes must be >= 1")
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        self.planes = planes
        self.capacity = capacity
        self.block_nbytes = block_nbytes
        self.pinned = pin_memory
        self.data = torch.empty((planes, capacity, block_nbytes), dtype=torch.uint8,
                                pin_memory=pin_memory)
        self.sums = np.zeros((planes, capacity), dtype=np.int64)
        self.tags = np.zeros((planes, capacity), dtype=np.int64)  # 0: holds nothing
        # Saves (the worker thread) forget and commit slots while loads (the engine thread)
        # read which slots hold what and their sums: one lock makes each of those one step,
        # so a load never pairs one block's tag check with another block's sum.
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def rows(self, plane: int, first: int, count: int, dtype: torch.dtype) -> torch.Tensor:
        """Slots ``first .. first + count - 1`` of ``plane`` as rows of ``dtype`` words."""
        return self.data[plane, first:first + count].view(dtype)

    def forget(self, plane: int, slots: Sequence[int]) -> None:
        """These slots are being overwritten: they hold nothing until the save completes."""
        with self._lock:
            self.tags[plane, list(slots)] = 0

    def commit(self, plane: int, slots: Sequence[int], tags: Sequence[int],
               sums: np.ndarray) -> None:
        index = list(slots)
        with self._lock:
            self.sums[plane, index] = sums
            self.tags[plane, index] = tags

    def expect(self, planes: Sequence[int], slots: Sequence[int], tags: Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``slots`` hold the block of the same position's tag in every plane, the
        sums they hold: planes x slots), read in one step against saves. What a load then
        copies is checked against these sums on the device: a slot overwritten after this
        fails its block."""
        index = np.ix_(list(planes), list(slots))
        with self._lock:
            found, sums = self.tags[index], self.sums[index]
        return (found == np.asarray(tags, dtype=np.int64)).all(axis=0), sums

    def stats(self) -> dict[str, int | float]:
        return {"blocks": int(np.count_nonzero(self.tags)), "capacity_blocks": self.capacity,
                "planes": self.planes, "bytes": self.nbytes, "pinned": int(self.pinned)}

    def close(self, drain: bool = True) -> None:
        """Nothing in flight belongs to the slab itself (the runtime drains its copies)."""
