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
* a prompt's blocks form a chain: a block's KV was computed on top of the blocks before it
  (its *parent*, named at :meth:`reserve`). The store is closed under prefixes: a block is
  committed only on top of the stored copy of its parent it was saved on, only a block with
  no stored child is evicted,
  and a block a load found corrupt leaves with every block stored on top of it. Otherwise a
  request that computed a head again would save it under a tail computed on another
  computation of it, and in bfloat16 two computations of a block differ in low bits: the
  store would serve KV that no single run of the engine computed. Commits and uses
  (:meth:`touch`, :meth:`pin`) renew a chain head last, so the least recently used blocks
  are tails, and a load pins its whole chain. Each stored block keeps the *owner* of its
  save, so a request can tell whether the store's copy of a block is the one its own KV was
  computed on (:meth:`owner`).

Slots are handed out lowest first, so a request's blocks usually form a few contiguous runs:
the host store moves each run with one copy.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence


def copy_name(block_hash: str, owner: str | None) -> str:
    """What a stored block's slot tags name: the block and the computation its KV is (its
    save's owner), so planes a save missed that still hold another computation of the same
    block never pass a load's tag check."""
    return f"{block_hash}/{owner}"


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
        self._parent: dict[str, str | None] = {}  # saving or committed hash -> its parent
        self._children: dict[str, set[str]] = {}  # committed hash -> its committed children
        self._owner: dict[str, str] = {}  # saving or committed hash -> who saved it
        # saving hash -> its parent's owner at reserve: the copy of the parent it was
        # computed on (or the copy the saver's KV holds), which it may be committed on alone
        self._parent_owner: dict[str, str | None] = {}
        self.evictions = 0

    # ---- queries ----------------------------------------------------------------------------

    def slot(self, block_hash: str) -> int | None:
        """The slot of a committed block (None if it is not committed)."""
        return self._committed.get(block_hash)

    def is_committed(self, block_hash: str) -> bool:
        return block_hash in self._committed

    def owner(self, block_hash: str) -> str | None:
        """Who saved the stored (or being saved) copy of a block (None: not stored)."""
        return self._owner.get(block_hash)

    def used(self) -> int:
        return self.capacity - len(self._free)

    # ---- saves ------------------------------------------------------------------------------

    def reserve(self, hashes: Sequence[str], parents: Sequence[str | None] | None = None,
                owner: str = "") -> tuple[list[int], list[str]]:
        """Slots for saving ``hashes``, in order, evicting as needed: ``(slots, evicted)``.
        ``parents``: the block before each in its prompt (None: the first block; default
        all None); ``owner``: who saves them.

        Stops at the first block it cannot place (every other block pinned, being saved or
        under a stored child), so what is saved is always a prefix of what was asked. Evicted
        hashes are no longer committed when this returns. Asking for a block that
        :meth:`is_placed` is an error.
        """
        slots: list[int] = []
        evicted: list[str] = []
        for i, h in enumerate(hashes):
            if self.is_placed(h):
                raise ValueError(f"block {h} is already stored or being saved")
            if not self._free and not self._evict_one(evicted):
                break
            slot = heapq.heappop(self._free)
            self._saving[h] = slot
            parent = parents[i] if parents is not None else None
            self._parent[h] = parent
            self._parent_owner[h] = None if parent is None else self._owner.get(parent)
            self._owner[h] = owner
            slots.append(slot)
        return slots, evicted

    def is_placed(self, block_hash: str) -> bool:
        """Committed, being saved, or still held for a load: not to be saved again now."""
        return (block_hash in self._committed or block_hash in self._saving
                or block_hash in self._dropped)

    def _evict_one(self, evicted: list[str]) -> bool:
        for h in self._committed:
            if self._pins.get(h, 0) == 0 and not self._children.get(h):
                heapq.heappush(self._free, self._uncommit(h))
                evicted.append(h)
                self.evictions += 1
                return True
        return False

    def _uncommit(self, h: str) -> int:
        """Take a committed block out of the index and the chains; its slot."""
        slot = self._committed.pop(h)
        parent = self._parent.pop(h, None)
        if parent is not None and parent in self._children:
            self._children[parent].discard(h)
            if not self._children[parent]:
                del self._children[parent]
        self._children.pop(h, None)
        self._owner.pop(h, None)
        return slot

    def commit(self, hashes: Sequence[str], chain: Sequence[str] | None = None) -> list[str]:
        """Every worker stored these blocks (a run of one prompt's chain, in order): each is a
        hit from now on if the store holds the copy of its parent it was saved on, and fails
        otherwise (that copy failed, was evicted or dropped meanwhile, or another request's
        copy took its place), the blocks after it with it. Then ``chain`` (the prompt's
        blocks up to these; default the committed ones) is used (:meth:`touch`): the committed
        ones are among the most recently used, behind their heads. Returns them."""
        done: list[str] = []
        for h in hashes:
            slot = self._saving.pop(h, None)
            if slot is None:
                continue
            parent, on = self._parent.get(h), self._parent_owner.get(h)
            if parent is not None and (parent not in self._committed
                                       or self._owner.get(parent) != on):
                self._free_saving(h, slot)
                continue
            self._parent_owner.pop(h, None)
            self._committed[h] = slot
            if parent is not None:
                self._children.setdefault(parent, set()).add(h)
            done.append(h)
        self.touch(done if chain is None else chain)
        return done

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
                self._free_saving(h, slot)

    def _free_saving(self, h: str, slot: int) -> None:
        """A save that will never be served (taken out of ``_saving``): its slot is free and
        its chain entries go."""
        heapq.heappush(self._free, slot)
        self._parent.pop(h, None)
        self._parent_owner.pop(h, None)
        self._owner.pop(h, None)

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

    def drop(self, hashes: Iterable[str]) -> set[str]:
        """A load found these blocks missing or corrupt: no more hits for them nor for the
        blocks stored on top of them (computed on the copy that is gone); a slot is free once
        no load still reads it. Returns every block dropped."""
        dropped: set[str] = set()
        todo = [h for h in hashes if h in self._committed]
        while todo:
            h = todo.pop()
            if h not in self._committed:
                continue
            todo.extend(self._children.get(h, ()))
            slot = self._uncommit(h)
            dropped.add(h)
            if self._pins.get(h, 0):
                self._dropped[h] = slot
            else:
                heapq.heappush(self._free, slot)
        return dropped
