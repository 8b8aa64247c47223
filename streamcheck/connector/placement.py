"""Where each saved block lives in a bounded store, decided by the scheduler alone.

Why the scheduler and not the store: the scheduler answers lookups and plans loads; a store
that evicts on its own (least recently used, when a save needs room) removes blocks the
scheduler still counts as hits, and the load planned on them fails. Under vLLM's default
``kv_load_failure_policy="fail"`` such a request ends with an error, which a user sees as a
different output; under ``"recompute"`` it is recomputed, which is right but wastes the load
and the step. So capacity is managed here, where lookups are answered:

* a block is a *slot* (an index into each worker's store); a save gets its slots when the
  scheduler plans it, a hit is only a block whose save every worker committed;
* a block with a load in flight is *pinned*: it is never chosen for eviction until the load is
  reported done, so a planned load can never find its block gone or overwritten;
* eviction takes the least recently used committed, unpinned block; evicted hashes leave the
  index at once, so no later lookup counts them;
* a prompt's blocks form a chain (a block's KV was computed on top of the blocks before it),
  and a chain's head outlives its tail: commits and uses (:meth:`touch`, :meth:`pin`) make a
  chain's stored blocks the most recently used with the head last, so a stored block is
  always more recent than the blocks stored after it in any prompt, and the least recently
  used one is a tail. The store stays closed under prefixes: it never holds a tail without
  the head it was computed on, which a request that computed the head again would save under
  it (its tail then computed on another computation of the head: in bfloat16 they differ in
  low bits). A load pins its whole chain, so skipping pinned blocks never takes a head whose
  tail is kept. (A block a load found corrupt leaves at once, head or not: :meth:`drop`.)

Slots are handed out lowest first, so a request's blocks usually form a few contiguous runs:
the host store moves each run with one copy.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence


class Placement:
    """Slots ``0 .. capacity - 1`` for block hashes; LRU eviction of unpinned committed ones."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1 block")
        self.capacity = capacity
        self._free = list(range(capacity))  # a heap: lowest slot first
        self._committed: OrderedDict[str, int] = OrderedDict()  # hash -> slot, LRU first
        self._saving: dict[str, int] = {}  # hash -> slot, save in flight
        self._pins: dict[str, int] = {}  # hash -> loads in flight
        self._dropped: dict[str, int] = {}  # hash -> slot: dropped while pinned, freed at unpin
        self.evictions = 0

    # ---- queries ----------------------------------------------------------------------------

    def slot(self, block_hash: str) -> int | None:
        """The slot of a committed block (None if it is not committed)."""
        return self._committed.get(block_hash)

    def is_committed(self, block_hash: str) -> bool:
        return block_hash in self._committed

    def used(self) -> int:
        return self.capacity - len(self._free)

    # ---- saves ------------------------------------------------------------------------------

    def reserve(self, hashes: Sequence[str]) -> tuple[list[int], list[str]]:
        """Slots for saving ``hashes``, in order, evicting as needed: ``(slots, evicted)``.

        Stops at the first block it cannot place (every other block pinned or being saved),
        so what is saved is always a prefix of what was asked. Evicted hashes are no longer
        committed when this returns. Asking for a block that :meth:`is_placed` is an error.
        """
        slots: list[int] = []
        evicted: list[str] = []
        for h in hashes:
            if self.is_placed(h):
                raise ValueError(f"block {h} is already stored or being saved")
            if not self._free and not self._evict_one(evicted):
                break
            slot = heapq.heappop(self._free)
            self._saving[h] = slot
            slots.append(slot)
        return slots, evicted

    def is_placed(self, block_hash: str) -> bool:
        """Committed, being saved, or still held for a load: not to be saved again now."""
        return (block_hash in self._committed or block_hash in self._saving
                or block_hash in self._dropped)

    def _evict_one(self, evicted: list[str]) -> bool:
        for h in self._committed:
            if self._pins.get(h, 0) == 0:
                heapq.heappush(self._free, self._committed.pop(h))
                evicted.append(h)
                self.evictions += 1
                return True
        return False

    def commit(self, hashes: Sequence[str]) -> None:
        """Every worker stored these blocks (a run of one prompt's chain, in order): they are
        hits from now on, the most recently used, the first of them last."""
        for h in reversed(hashes):
            slot = self._saving.pop(h, None)
            if slot is not None:
                self._committed[h] = slot

    def touch(self, chain: Sequence[str]) -> None:
        """A request used the blocks of ``chain`` (a prompt's blocks, in order, from its
        first): the stored ones become the most recently used, the head last."""
        for h in reversed(chain):
            if h in self._committed:
                self._committed.move_to_end(h)

    def abandon(self, hashes: Iterable[str]) -> None:
        """These saves failed somewhere: their slots are free again, nothing is served."""
        for h in hashes:
            slot = self._saving.pop(h, None)
            if slot is not None:
                heapq.heappush(self._free, slot)

    # ---- loads ------------------------------------------------------------------------------

    def pin(self, chain: Sequence[str]) -> None:
        """A load (or a save on top) of these blocks of one prompt's chain is planned: keep
        them until :meth:`unpin`; they are used now (:meth:`touch`)."""
        for h in chain:
            self._pins[h] = self._pins.get(h, 0) + 1
        self.touch(chain)

    def unpin(self, hashes: Iterable[str]) -> None:
        for h in hashes:
            n = self._pins.get(h, 0) - 1
            if n > 0:
                self._pins[h] = n
                continue
            self._pins.pop(h, None)
            slot = self._dropped.pop(h, None)
            if slot is not None:
                heapq.heappush(self._free, slot)

    def drop(self, hashes: Iterable[str]) -> None:
        """A load found these blocks missing or corrupt: no more hits; the slot is free once
        no other load still reads it."""
        for h in hashes:
            slot = self._committed.pop(h, None)
            if slot is None:
                continue
            if self._pins.get(h, 0):
                self._dropped[h] = slot
            else:
                heapq.heappush(self._free, slot)
