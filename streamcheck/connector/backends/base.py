"""The backend contract: what a KV store must offer the connector runtime, and nothing more.

A backend moves fixed-size KV blocks between host memory and one store. It knows the block size
and its store; it knows nothing of vLLM, CUDA or the connector's threads. The runtime calls it
from its own worker threads and must never stall the engine step, hence the shape below:

* ``lookup`` answers at once (bounded by a short timeout for remote stores) and never raises for
  store trouble: an unreachable store is simply a miss, and the blocks get recomputed;
* ``save``/``load`` return a :class:`Transfer` handle whose completion is polled, so a caller can
  keep many transfers in flight and never blocks on one it does not need yet;
* a failed save never leaves anything for ``lookup`` to find (every backend writes, then
  publishes the whole block in one atomic step), and a failed load is ``FAILED``, never ``DONE``
  with partial data, so vLLM recomputes instead of decoding over stale or torn KV. (A networked
  store adds one case: a save whose reply was lost may still have committed, whole; see
  ``redis_store``.)

Buffer lifetime: ``save`` and ``load`` of the asynchronous backends (disk, redis) are zero-copy.
The caller must keep the buffer alive and unchanged (``save``) or untouched (``load``) until the
transfer is no longer ``PENDING``. The host backend copies synchronously and returns a finished
transfer, which trivially satisfies the same rule.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


class BackendError(RuntimeError):
    """The store failed: down, timed out, a block is missing or corrupt."""


class TransferState(enum.Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class TransferResult:
    """Where a transfer stands; ``nbytes`` counts payload bytes moved, ``error`` says why not."""

    state: TransferState
    nbytes: int = 0
    error: str = ""


PENDING_RESULT = TransferResult(TransferState.PENDING)


@runtime_checkable
class Transfer(Protocol):
    """A handle on one save or load; completion is polled so the caller never has to block."""

    def poll(self) -> TransferResult:
        """The current state; never blocks."""
        ...

    def wait(self, timeout: float | None = None) -> TransferResult:
        """Block up to ``timeout`` seconds (``None``: until the transfer ends, which every
        backend bounds by its own store timeouts); ``PENDING`` if it is still running."""
        ...


@runtime_checkable
class KVBackend(Protocol):
    """Moves KV blocks of ``block_nbytes`` bytes between host buffers and a store."""

    name: str
    block_nbytes: int

    def lookup(self, keys: Sequence[str]) -> list[bool]:
        """Which keys hold a committed block. Non-blocking, repeatable, never raises for store
        trouble (an unreachable store answers all ``False``); a bad key raises ``ValueError``."""
        ...

    def save(self, key: str, block: memoryview | bytes) -> Transfer:
        """Store ``block`` under ``key``; visible to ``lookup`` only once committed."""
        ...

    def load(self, key: str, into: memoryview) -> Transfer:
        """Fill ``into`` (exactly ``block_nbytes`` bytes) with the verified block."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Forget these keys; missing keys are ignored."""
        ...

    def stats(self) -> dict[str, int | float]:
        """Counters: bytes_saved, bytes_loaded, hits, misses, failures, evictions, blocks."""
        ...

    def close(self) -> None:
        """Drain (or cancel) in-flight work and release resources; idempotent."""
        ...


def validate_key(key: object) -> str:
    """Return ``key`` if it is a safe block key, else raise ``ValueError``.

    Checked before anything touches a store: a key becomes a file name or a Redis key, so it
    must not be able to climb out of a directory (no ``/``) or smuggle protocol text (no spaces,
    newlines or non-ASCII). Hex digests, ``:``/``.``-joined parts and layer suffixes all pass.
    """
    if not isinstance(key, str) or KEY_PATTERN.fullmatch(key) is None:
        raise ValueError(
            f"invalid block key {key!r}: expected 1-200 characters of [A-Za-z0-9_.:-]"
        )
    return key


def validate_keys(keys: Sequence[str]) -> list[str]:
    """Validate every key first, so a bad key in a batch touches nothing in the store."""
    if isinstance(keys, (str, bytes)):
        raise ValueError("keys must be a sequence of keys, not a single string")
    return [validate_key(k) for k in keys]


def as_block_view(buf: memoryview | bytes | bytearray, nbytes: int, *,
                  writable: bool) -> memoryview:
    """A flat byte view of ``buf``, checked to be exactly one block (and writable for loads).

    Any C-contiguous buffer works (bytes, bytearray, a numpy row of a pinned torch tensor); it is
    viewed, never copied, so the asynchronous backends can stay zero-copy.
    """
    view = memoryview(buf)
    if not view.c_contiguous:
        raise ValueError("block buffer must be C-contiguous")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if view.nbytes != nbytes:
        raise ValueError(f"block buffer has {view.nbytes} bytes, blocks have {nbytes}")
    if writable and view.readonly:
        raise ValueError("load target buffer is read-only")
    return view
