"""Host-memory backend: slab, LRU eviction, capacity, and no stale data after reuse."""

from __future__ import annotations

import os

import pytest
import torch

from streamcheck.connector.backends import HostBackend, TransferState

DONE, FAILED = TransferState.DONE, TransferState.FAILED
N = 1024


def _load(backend: HostBackend, key: str) -> tuple[TransferState, bytes]:
    out = bytearray(N)
    return backend.load(key, memoryview(out)).poll().state, bytes(out)


def test_slab_is_preallocated_and_pinned_only_with_cuda() -> None:
    backend = HostBackend(8, N)
    assert backend.slab.shape == (8, N) and backend.slab.dtype == torch.uint8
    assert backend.pinned is torch.cuda.is_available()
    assert backend.slab.is_pinned() is torch.cuda.is_available()
    backend.close()
    with pytest.raises(Exception, match="closed"):
        _ = backend.slab


def test_transfers_complete_before_save_returns() -> None:
    backend = HostBackend(2, N)
    assert backend.save("a", os.urandom(N)).poll().state is DONE
    assert backend.lookup(["a"]) == [True]


def test_lru_eviction_at_capacity() -> None:
    backend = HostBackend(3, N)
    data = {k: os.urandom(N) for k in "abcde"}
    for k in "abc":
        backend.save(k, data[k])
    assert backend.lookup(["a"]) == [True]  # a is now the most recently used
    backend.save("d", data["d"])  # evicts b, the least recently used
    assert backend.lookup(list("abcd")) == [True, False, True, True]
    assert backend.stats()["evictions"] == 1
    assert _load(backend, "c")[0] is DONE  # c now most recent; a is the oldest
    backend.save("e", data["e"])
    assert backend.lookup(list("abcde")) == [False, False, True, True, True]
    assert backend.stats()["evictions"] == 2
    assert backend.stats()["blocks"] == 3


def test_evicted_key_never_returns_the_new_owner_of_its_slot() -> None:
    backend = HostBackend(1, N)
    old, new = os.urandom(N), os.urandom(N)
    backend.save("old", old)
    backend.save("new", new)  # same slot, new owner
    state, out = _load(backend, "old")
    assert state is FAILED
    assert out != new
    assert _load(backend, "new") == (DONE, new)


def test_overwrite_replaces_in_place() -> None:
    backend = HostBackend(2, N)
    first, second = os.urandom(N), os.urandom(N)
    backend.save("k", first)
    backend.save("k", second)
    assert _load(backend, "k") == (DONE, second)
    assert backend.stats()["blocks"] == 1
    assert backend.stats()["evictions"] == 0


def test_delete_frees_the_slot() -> None:
    backend = HostBackend(2, N)
    backend.save("a", os.urandom(N))
    backend.save("b", os.urandom(N))
    backend.delete(["a"])
    backend.save("c", os.urandom(N))  # takes a's slot: no eviction
    assert backend.lookup(["a", "b", "c"]) == [False, True, True]
    assert backend.stats()["evictions"] == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HostBackend(0, N)
