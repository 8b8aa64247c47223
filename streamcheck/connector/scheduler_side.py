"""The scheduler's half of the connector, free of vLLM types so it can be tested and timed alone.

What the scheduler asks must cost it nothing that grows with the number of requests waiting
for KV: lookups answer from an in-memory index of committed block hashes (kept up to date by
the workers' reports), so ``matched_tokens`` is O(prompt blocks) and repeatable; requests whose
KV is loading are parked in a dict and touched again only when a worker reports them done, so a
step costs O(requests scheduled + events this step), not O(parked requests) (but for a report
of missing or corrupt blocks, which are rare: every parked load is checked for them).

A block hash enters the index only after EVERY worker saved and committed every layer of it
(each worker holds its own shard of the layers or heads), and a failed save never does. A hash
leaves the index when a load finds it missing or corrupt (with a placement, together with the
blocks stored on top of it), so one bad block is recomputed once, not on every hit. Only full
prompt blocks are saved, and with a placement only on the computation of the blocks before
them that the saving request's KV holds (``_on_its_own_blocks``).

Block lifetime, the part vLLM leaves to the connector: a finished request whose saves still read
its blocks is reported as "delay the free" (``finished`` returns True) and named in the next
step's ``delayed`` list, so the workers know to report it in ``finished_sending`` once its saves
ended -- and only then: reporting a request whose blocks vLLM already freed crashes vLLM. A
preempted request's blocks are freed by vLLM at once; ``preempted`` tells the workers to finish
reading them before the next forward reuses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from streamcheck.connector.keys import block_hashes
from streamcheck.connector.placement import Placement, copy_name


@dataclass
class LoadPlan:
    req_id: str
    block_ids: list[int]
    hashes: list[str]
    first: int = 0  # index of the first planned block in the request's prompt blocks
    slots: list[int] = field(default_factory=list)  # placed stores: where each block lives
    copies: list[str] = field(default_factory=list)  # placed stores: see copy_name


@dataclass
class SavePlan:
    group: str  # "req_id@n": one save group per request per step
    req_id: str
    block_ids: list[int]
    hashes: list[str]
    slots: list[int] = field(default_factory=list)  # placed stores: where each block goes
    copies: list[str] = field(default_factory=list)  # placed stores: see copy_name



@dataclass
class StepMeta:
    """What the workers must do this step."""

    loads: list[LoadPlan] = field(default_factory=list)
    saves: list[SavePlan] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)  # flush saves before blocks are reused
    delayed: list[str] = field(default_factory=list)  # report in finished_sending when saved
    evicted: list[str] = field(default_factory=list)  # placed key stores: delete these first
    # nothing is computed this step, so no forward waits behind a worker that waits for its
    # loads here: their report goes out in this step's output, an engine step sooner
    idle: bool = False


@dataclass
class _Request:
    hashes: list[str]
    prompt_len: int
    block_ids: list[int] = field(default_factory=list)
    saved_blocks: int = 0  # blocks planned for saving (or loaded: already in the store)
    lookup_computed: int = 0  # tokens vLLM had computed locally at the last lookup
    life: int = 0  # preemptions so far: each life computes its KV anew
    full_seen: int = 0  # prompt blocks full at the last step seen, in this life
    loaded_end: int = 0  # the end of the blocks its load brought, in this life
    open_groups: set[str] = field(default_factory=set)
    steps: int = 0
    finished: bool = False


@dataclass
class _Group:
    req_id: str
    hashes: list[str]
    chain: list[str] = field(default_factory=list)  # the prompt's blocks up to its last
    held: list[str] = field(default_factory=list)  # its stored ancestors, pinned meanwhile
    reports: int = 0  # workers that ended this group
    failed: bool = False


class SchedulerSide:
    """Lookups, load/save planning and block lifetime for one scheduler.

    ``workers``: how many workers must report a save group before it counts (vLLM's
    ``parallel_config.world_size``). ``placement``: for a store of bounded capacity, the
    scheduler decides where blocks go and which are evicted (:mod:`.placement`), so a hit is
    never a block the store already dropped; without one the store is taken as unbounded.
    """

    def __init__(self, block_size: int, namespace: str = "", workers: int = 1,
                 placement: Placement | None = None, sync_loads: bool = False) -> None:
        if block_size < 1:
            raise ValueError("block_size must be positive")
        if workers < 1:
            raise ValueError("workers must be positive")
        self.block_size = block_size
        self.namespace = namespace
        self.workers = workers
        self.placement = placement
        # sync: a hit is loaded in the step that computes the request (no parking); its pins
        # hold until the next step is built, by when the workers have run the load's step
        # (a worker runs steps in order and waits for its sync loads inside the step)
        self.sync_loads = sync_loads
        self._sync_sent: list[str] = []
        self.committed: set[str] = set()
        self.parked: dict[str, LoadPlan] = {}  # async loads in flight, by request
        self._requests: dict[str, _Request] = {}
        self._groups: dict[str, _Group] = {}
        self._pending_loads: list[LoadPlan] = []
        self._pins: dict[str, list[str]] = {}  # request -> hashes its load holds (placement)
        # GPU block id -> which computation its KV is: the computing request's life, or for a
        # loaded block the owner of the store's copy (see _on_its_own_blocks); as many
        # entries as vLLM has GPU blocks at most
        self._gpu: dict[int, str] = {}
        self._preempted: list[str] = []
        self._delayed: list[str] = []

    # ---- lookups ----------------------------------------------------------------------------

    def track(self, req_id: str, prompt: list[int]) -> None:
        """Know a request's prompt blocks (hashed once, on first sight)."""
        self._request(req_id, prompt)

    def _request(self, req_id: str, prompt: list[int]) -> _Request:
        state = self._requests.get(req_id)
        if state is None:
            state = self._requests[req_id] = _Request(
                block_hashes(prompt, self.block_size, self.namespace), len(prompt))
        return state

    def matched_tokens(self, req_id: str, prompt: list[int], num_computed: int
                       ) -> tuple[int, bool]:
        """(new tokens loadable beyond ``num_computed``, load asynchronously?).

        The prompt's last token is always computed (its logits give the first output token).
        When the prompt ends on a block boundary and its last block is stored too, that block
        is loaded with the others, and the step that follows computes the one last token, not
        a block's worth: a one-token step, which vLLM runs as a decode (under its default
        compilation, a full CUDA graph's replay) where a 16-token one runs piecewise, layer by
        layer from the host. As vLLM's own connectors do: an async load of the whole prompt
        is reported in full (vLLM's scheduler then takes the last token back to compute it);
        a sync load's count stops one token short (the scheduler needs a token to schedule).
        An async load of the last block alone (vLLM's own cache held the rest) is not worth an
        extra engine step and is not offered; a sync one costs only the block's copy.

        Repeatable: vLLM may ask again next step for the same request.
        """
        state = self._request(req_id, prompt)
        state.lookup_computed = num_computed  # where a load planned after this lookup starts
        usable = (len(prompt) - 1) // self.block_size  # blocks wholly before the last token
        hits = 0
        for h in state.hashes[:usable]:
            if h not in self.committed:
                break
            hits += 1
        new = hits * self.block_size - num_computed
        if (hits == usable < len(state.hashes) and state.hashes[usable] in self.committed
                and (new > 0 or self.sync_loads)):  # the block holding the last token too
            new = len(prompt) - num_computed - (1 if self.sync_loads else 0)
        return (new, not self.sync_loads) if new > 0 else (0, False)

    def after_alloc(self, req_id: str, block_ids: list[int], num_external: int) -> None:
        """Plan the load of ``num_external`` tokens into ``block_ids`` (all the request's
        blocks); they follow the tokens vLLM had locally at the lookup (its prefix cache)."""
        state = self._requests.get(req_id)
        if state is None or num_external <= 0:
            return
        state.block_ids = list(block_ids)
        first = state.lookup_computed // self.block_size
        end = state.lookup_computed + num_external
        last = -(-end // self.block_size)  # a sync load of the last block stops a token short
        hashes = state.hashes[first:last]
        plan = LoadPlan(req_id, list(block_ids[first:last]), hashes, first)
        if self.placement is not None:  # held until the workers report this load done
            self._release(req_id)
            chain = state.hashes[:last]  # with the heads they hang on (see placement)
            self.placement.pin(chain)
            self._pins[req_id] = chain
            plan.slots = [self.placement.slot(h) for h in hashes]  # type: ignore[misc]
            plan.copies = [copy_name(h, self.placement.owner(h)) for h in hashes]
            for i in range(first, last):  # vLLM's copy of these is the store's
                self._gpu[block_ids[i]] = self.placement.owner(state.hashes[i]) or ""
        # The block holding the prompt's last token gets that token's KV computed into it by
        # this request in its next forward: from now on the GPU block is this request's
        # computation, not the store's copy (which the store keeps). Tagged so here, not when
        # ``build`` reaches the request: another request given the block by vLLM's cache in
        # the same step may come first in that step's list.
        state.loaded_end = last
        if last * self.block_size >= state.prompt_len:
            state.loaded_end = last - 1
            self._gpu[block_ids[last - 1]] = f"{req_id}#{state.life}"
        state.saved_blocks = max(state.saved_blocks, last)  # these are in the store already
        self._pending_loads.append(plan)
        if not self.sync_loads:
            self.parked[req_id] = plan

    # ---- per step ---------------------------------------------------------------------------

    def build(self, scheduled: list[tuple[str, list[int] | None, bool, int]]) -> StepMeta:
        """``scheduled``: (req_id, block ids, replace?, tokens computed after this step).

        New and resumed (after preemption) requests come with their whole block list
        (replace=True); running ones with the blocks added this step, if any.
        """
        for req_id in self._sync_sent:  # the workers ran those loads in the step they went out
            self._release(req_id)
        self._sync_sent = [p.req_id for p in self._pending_loads] if self.sync_loads else []
        meta = StepMeta(loads=self._pending_loads, preempted=self._preempted,
                        delayed=self._delayed)
        self._pending_loads, self._preempted, self._delayed = [], [], []
        for req_id, blocks, replace, computed_after in scheduled:
            state = self._requests.get(req_id)
            if state is None:
                continue
            if replace:
                state.block_ids = list(blocks or [])
            elif blocks:
                state.block_ids.extend(blocks)
            full = min(computed_after, state.prompt_len) // self.block_size
            full = min(full, len(state.hashes), len(state.block_ids))
            tag = f"{req_id}#{state.life}"  # this computation of the request's KV
            start = max(state.full_seen, state.lookup_computed // self.block_size,
                        state.loaded_end)
            for i in range(start, full):  # blocks it computed itself (not local, not loaded)
                self._gpu[state.block_ids[i]] = tag
            state.full_seen = max(state.full_seen, full)
            if full <= state.saved_blocks:
                continue
            todo = [i for i in range(state.saved_blocks, full)
                    if state.hashes[i] not in self.committed]
            state.saved_blocks = full
            slots: list[int] = []
            held: list[str] = []
            if self.placement is not None:
                todo = [i for i in todo if not self.placement.is_placed(state.hashes[i])]
            todo = self._on_its_own_blocks(state, todo)
            if self.placement is not None and todo:
                held = [h for h in state.hashes[:todo[0]] if self.placement.is_committed(h)]
                self.placement.pin(held)  # what the saved blocks hang on stays meanwhile
                slots, evicted = self.placement.reserve(
                    [state.hashes[i] for i in todo],
                    [state.hashes[i - 1] if i else None for i in todo], tag)
                todo = todo[:len(slots)]  # no room for the rest: they stay unsaved
                self.committed.difference_update(evicted)
                meta.evicted.extend(evicted)
                if not todo:
                    self.placement.unpin(held)
            if todo:
                state.steps += 1
                group = f"{req_id}@{state.steps}"
                hashes = [state.hashes[i] for i in todo]
                state.open_groups.add(group)
                self._groups[group] = _Group(req_id, hashes, state.hashes[:todo[-1] + 1], held)
                meta.saves.append(SavePlan(
                    group, req_id, [state.block_ids[i] for i in todo], hashes, slots,
                    [copy_name(h, tag) for h in hashes] if self.placement is not None else []))
        return meta

    def _on_its_own_blocks(self, state: _Request, todo: list[int]) -> list[int]:
        """The blocks of ``todo`` (indices, in order) to save: up to the first earlier block
        whose stored copy is not the computation this request's KV holds. Two computations of
        a block differ in low bits in bfloat16 (two requests that both missed it, a request
        resumed after preemption), and this request's later blocks were computed on its
        copy: saved under another, the store would serve KV that no single run computed.
        Which copy the request holds is known per GPU block (``_gpu``): what the request
        computed itself, what it loaded, and for blocks vLLM's own cache gave it, whatever
        computed or loaded that GPU block. Without a placement (a store that bounds itself)
        the store's copies are not told apart, and every block is saved."""
        if not todo or self.placement is None:
            return todo
        planned = set(todo)
        for j in range(todo[-1]):
            if j in planned:
                continue
            copy = self._gpu.get(state.block_ids[j]) if j < len(state.block_ids) else None
            if copy is None or copy != self.placement.owner(state.hashes[j]):
                return [i for i in todo if i < j]
        return todo

    def on_worker_report(self, saves_ok: Mapping[str, int], saves_failed: Mapping[str, int],
                         missing: Iterable[str], loaded: Iterable[str]) -> None:
        """The workers' news, summed over workers: save groups that ended (how many workers
        ended each, ok or failed), hashes a load found missing or corrupt, finished loads."""
        missing = set(missing)
        if self.placement is not None:  # with the blocks stored on top of them
            missing |= self.placement.drop(missing)
        self.committed.difference_update(missing)
        if missing and self.sync_loads:  # vLLM recomputes from the first failed block: save
            for state in self._requests.values():  # it again (failures are rare: a scan)
                for i, h in enumerate(state.hashes[:state.saved_blocks]):
                    if h in missing:
                        state.saved_blocks = i
                        break
            # A group planned before this report (the next step, scheduled ahead of the
            # failing one's output) may hold blocks computed after a failed one: fail it.
            for entry in self._groups.values():
                state = self._requests.get(entry.req_id)
                if state is None or not entry.hashes:
                    continue
                first = state.hashes.index(entry.hashes[0]) if entry.hashes[0] in \
                    state.hashes else len(state.hashes)
                if any(h in missing for h in state.hashes[:first]):
                    entry.failed = True
        for group in set(saves_ok) | set(saves_failed):
            entry = self._groups.get(group)
            if entry is None:
                continue
            entry.reports += saves_ok.get(group, 0) + saves_failed.get(group, 0)
            entry.failed = entry.failed or saves_failed.get(group, 0) > 0
            if entry.reports >= self.workers:
                self._close(group, entry)
        # A parked load that read a missing block: vLLM recomputes from there, so those blocks
        # are the request's own computation (tagged as such when built) and are saved again.
        # Not only loads that end in this report: at TP > 1 a worker's failure can come a
        # step before every worker finished the load (vLLM reports it only then).
        for req_id, plan in self.parked.items() if missing else ():
            state = self._requests.get(req_id)
            if state is None:
                continue
            for i, h in enumerate(plan.hashes):
                if h in missing:
                    state.saved_blocks = min(state.saved_blocks, plan.first + i)
                    state.loaded_end = min(state.loaded_end, plan.first + i)
                    break
        for req_id in loaded:
            self._release(req_id)
            self.parked.pop(req_id, None)

    def _unplan(self, req_id: str) -> None:
        """The request is gone before its load was sent: drop the plan and its pins. A load
        already sent keeps its pins until the workers report it done."""
        if any(p.req_id == req_id for p in self._pending_loads):
            self._pending_loads = [p for p in self._pending_loads if p.req_id != req_id]
            self._release(req_id)

    def _release(self, req_id: str) -> None:
        """A load of ``req_id`` ended (or will never run): unpin what it read."""
        hashes = self._pins.pop(req_id, None)
        if hashes is not None and self.placement is not None:
            self.placement.unpin(hashes)

    def _close(self, group: str, entry: _Group) -> None:
        del self._groups[group]
        if self.placement is not None:
            if entry.failed:
                self.placement.abandon(entry.hashes)
                stored: list[str] = []
            else:  # each only on top of its stored parent; its heads more recent than these
                stored = self.placement.commit(entry.hashes, entry.chain)
            self.placement.unpin(entry.held)
        else:
            stored = [] if entry.failed else entry.hashes
        self.committed.update(stored)
        state = self._requests.get(entry.req_id)
        if state is None:
            return
        state.open_groups.discard(group)
        if state.finished and not state.open_groups:
            del self._requests[entry.req_id]

    def preempted(self, req_id: str) -> None:
        """vLLM freed its blocks: the workers must finish reading them before they are reused,
        so the request no longer holds anything for its earlier saves. Resumed, it computes
        or loads its KV anew: what it held before says nothing of it then."""
        state = self._requests.get(req_id)
        if state is not None:
            state.block_ids = []
            state.open_groups.clear()
            state.life += 1
            state.full_seen = state.loaded_end = state.saved_blocks = 0
        self.parked.pop(req_id, None)
        self._unplan(req_id)
        self._preempted.append(req_id)

    def finished(self, req_id: str) -> bool:
        """The request ended; True if its blocks must stay until its saves finish."""
        self.parked.pop(req_id, None)
        self._unplan(req_id)
        state = self._requests.get(req_id)
        if state is None:
            return False
        if state.open_groups:
            state.finished = True
            self._delayed.append(req_id)
            return True
        del self._requests[req_id]
        return False
