"""Host-memory backend: a preallocated (pinned when CUDA is present) slab with LRU eviction.

One allocation up front rather than one per block: pinning is expensive (page locking, a driver
call) and per-block allocations would fragment, so the slab is allocated once and blocks are
slots in it. Pinned memory lets the connector copy host↔device asynchronously at full bandwidth.

Save and load are plain memcpy under one lock and finish before they return (a ``DONE``
transfer), so no caller buffer is held past the call. The copy is numpy's, which releases the
GIL while it runs, so other threads of the process (the engine's) are not held up by it.

The lock also makes an overwrite or an eviction atomic with respect to loads: a load never sees
half of an overwritten slot, and a key evicted (its slot handed to another key) is a miss, never
the other key's bytes.

Each slot keeps its key's CRC-32 (see ``blockformat``) outside the slab, so the slab stays a
dense array of blocks; the CRC is checked on the bytes actually delivered to the caller.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from streamcheck.connector.backends.base import (
    BackendError,
    Transfer,
    TransferResult,
    TransferState,
    as_block_view,
    validate_key,
    validate_keys,
)
from streamcheck.connector.backends.blockformat import block_crc, verify_payload
from streamcheck.connector.backends.transfers import CompletedTransfer, Counters, failed


class HostBackend:
    """KV blocks in a host-memory slab of ``capacity_blocks`` slots, least recently used out.

    ``pin_memory=None`` pins when CUDA is available (pinning needs a CUDA driver).
    """

    name = "host"

    def __init__(self, capacity_blocks: int, block_nbytes: int,
                 pin_memory: bool | None = None) -> None:
        if capacity_blocks < 1 or block_nbytes < 1:
            raise ValueError("capacity_blocks and block_nbytes must be >= 1")
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        self.block_nbytes = block_nbytes
        self.capacity_blocks = capacity_blocks
        self.pinned = pin_memory
        self._slab: torch.Tensor | None = torch.empty(
            (capacity_blocks, block_nbytes), dtype=torch.uint8, pin_memory=pin_memory)
        self._rows: np.ndarray | None = self._slab.numpy()  # one row per slot, shared memory
        self._crc = [0] * capacity_blocks
        self._slots: OrderedDict[str, int] = OrderedDict()  # key -> slot, oldest use first
        self._free = list(range(capacity_blocks - 1, -1, -1))
        self._lock = threading.Lock()
        self._counters = Counters()

    @property
    def slab(self) -> torch.Tensor:
        """The slab tensor (``capacity_blocks x block_nbytes`` uint8)."""
        if self._slab is None:
            raise BackendError("backend closed")
        return self._slab

    def lookup(self, keys: Sequence[str]) -> list[bool]:
        keys = validate_keys(keys)
        with self._lock:
            found = []
            for key in keys:
                present = self._rows is not None and key in self._slots
                if present:
                    self._slots.move_to_end(key)  # a hit is about to be loaded: keep it
                found.append(present)
        return self._counters.lookup(found)

    def save(self, key: str, block: memoryview | bytes) -> Transfer:
        key = validate_key(key)
        source = as_block_view(block, self.block_nbytes, writable=False)
        crc = block_crc(key, source)
        n = self.block_nbytes
        evicted = 0
        with self._lock:
            if self._rows is None:
                return failed(self._counters, "backend closed")
            slot = self._slots.get(key)
            if slot is not None:
                self._slots.move_to_end(key)  # overwrite in place, under the lock
            elif self._free:
                slot = self._free.pop()
            else:
                _, slot = self._slots.popitem(last=False)
                evicted = 1
            np.copyto(self._rows[slot], np.frombuffer(source, dtype=np.uint8))
            self._crc[slot] = crc
            self._slots[key] = slot
        self._counters.add(bytes_saved=n, evictions=evicted)
        return CompletedTransfer(TransferResult(TransferState.DONE, nbytes=n))

    def load(self, key: str, into: memoryview) -> Transfer:
        key = validate_key(key)
        target = as_block_view(into, self.block_nbytes, writable=True)
        n = self.block_nbytes
        with self._lock:
            if self._rows is None:
                return failed(self._counters, "backend closed")
            slot = self._slots.get(key)
            if slot is None:
                return failed(self._counters, f"block {key!r} not found")
            self._slots.move_to_end(key)
            np.copyto(np.frombuffer(target, dtype=np.uint8), self._rows[slot])
            crc = self._crc[slot]
        try:
            verify_payload(key, target, crc)
        except BackendError as exc:
            return failed(self._counters, str(exc))
        self._counters.add(bytes_loaded=n)
        return CompletedTransfer(TransferResult(TransferState.DONE, nbytes=n))

    def delete(self, keys: Sequence[str]) -> None:
        keys = validate_keys(keys)
        with self._lock:
            for key in keys:
                slot = self._slots.pop(key, None)
                if slot is not None:
                    self._free.append(slot)

    def stats(self) -> dict[str, int | float]:
        stats = self._counters.snapshot()
        with self._lock:
            stats["blocks"] = len(self._slots)
        stats["capacity_blocks"] = self.capacity_blocks
        return stats

    def close(self, drain: bool = True) -> None:
        """Release the slab. Nothing is ever in flight (copies are synchronous), so ``drain``
        is accepted for symmetry with the asynchronous backends and changes nothing."""
        with self._lock:
            if self._rows is None:
                return
            self._rows = None
            self._slab = None
            self._slots.clear()
            self._free.clear()
