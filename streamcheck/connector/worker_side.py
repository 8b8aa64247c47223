"""The connector's worker side (beside :mod:`~streamcheck.connector.scheduler_side`): a worker
thread, a transfer stream, event ordering, gathered copies. (Not :mod:`streamcheck.runtime`,
the CUDA and simulator backends the audit runs on.)

It gives a backend (which only moves host blocks) everything else a KV connector needs:

* one worker thread per runtime; it calls ``set_device`` first and creates its two streams
  (transfer, scatter) in that thread, so they live on the worker's device (never the default
  stream);
* a save waits on an event the engine records on its compute stream at the handoff
  (``save_layer``), so the copy reads the KV the forward wrote, not a half-written one;
* a load records an event after its last scatter; once the host saw it complete, the engine's
  stream waits on it and the reads of its blocks are declared (``wait_for_loads``, once a
  step, before any forward reads them). Host-slab loads are issued by the engine thread
  itself on a load stream and retired when the engine polls (``load_planes``): a thread in
  between only waits for the GIL;
* scattered blocks are gathered on the device into one contiguous buffer and moved with ONE
  host copy into pinned staging (on H200 one gathered copy runs at ~53 GB/s, 2048 separate
  64 KiB copies at ~9.5 GB/s), then handed to the backend block by block; loads go the other
  way (host copies on the transfer stream, each piece scattered on the scatter stream while
  the next piece is copied: ``LOAD_PIECES``). The gather and scatter kernels index whole
  blocks viewed as 8-byte words where the layout allows: the same bytes, an eighth of the
  elements for the indexing kernel to address;
* backend calls run in the worker thread, one block after another. Spreading them over a
  pool of threads was measured (H200 host, host backend, 8 threads) at half the rate of one
  thread: the per-block Python around the checksum and memcpy fights for the GIL. Asynchronous
  backends (Redis, disk) overlap their own requests anyway;
* a save group (one request's blocks of one step, over many layers) completes only after the
  engine seals it (``seal``: every layer was queued) AND every one of its transfers ended, so a
  group can never look done while later layers are still to be queued;
* nothing the engine calls blocks: work is queued, completion is polled;
* every copy is declared to streamcheck (``launch``/``handoff``), so in ``assert`` mode a hazard
  on the connector's own path fails that transfer (the blocks are recomputed) instead of
  corrupting KV; failed loads are reported as failed block ids, failed saves never become
  visible to lookups (the backend commits last).

On a CPU device (tests) there are no streams or events: copies run synchronously in the
worker thread, with the same bookkeeping.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import streamcheck
from streamcheck.connector.backends.base import KVBackend, TransferResult, TransferState
from streamcheck.connector.metrics import ConnectorMetrics
from streamcheck.connector.slab import HostSlab, block_sums, key_tag, runs
from streamcheck.connector.timeline import Timeline
from streamcheck.wrappers.user_launch import BlockSet

LOAD_PIECES = 4  # a loaded chunk's copy and scatter overlap in this many pieces
MAX_IN_FLIGHT = 8  # slab transfers issued to the device and not yet retired
CHECK_PLANES = 8  # planes of one word layout whose blocks one slab transfer sums at once
# completed loads kept for the next forward's ``wait_for_loads``, this many a plane (an entry
# a slab load, or a plane's chunk of a load without the slab): vLLM calls it every step, the
# bound is for a caller that does not, and leaves room for every plane's chunks of many loads
MAX_LOAD_WAITS_A_PLANE = 64


@dataclass
class _Job:
    kind: str  # "save" | "load"
    group: str  # the save group, or the request whose blocks are loaded
    layer: int
    block_ids: list[int]
    keys: list[str]
    # event recorded on the engine's stream when the job was queued: a save's copy waits for
    # the forward's writes, a load's writes wait for the forward's earlier reads of the blocks
    # (a block freed by one request and loaded for another may still be read by attention)
    ready: Any = None
    handoffs: tuple[Any, ...] = ()  # save: streamcheck's records of the blocks handed off
    done: Any = None  # load: event recorded by the worker after the last copy
    read: bool = False  # save: its blocks have been copied out of the KV cache
    slots: list[int] = field(default_factory=list)  # slab: where each block lives
    planes: list[int] = field(default_factory=list)  # slab: every plane this job moves
    tags: list[int] = field(default_factory=list)  # slab: which block each slot must hold
    # a slab save merged from several layers' (``_merge_held_saves``): their ready events,
    # each waited for too (the layers may have queued on different streams)
    also_ready: tuple[Any, ...] = ()


@dataclass
class _InFlight:
    """A slab transfer issued to the device: ``retire`` runs once ``done`` has completed."""

    done: Any  # a CUDA event, or None when the transfer already completed (CPU)
    retire: Callable[[], None]
    job: _Job
    keep: tuple[Any, ...] = ()  # device buffers the copies still read or write
    issued_at: float = 0.0  # perf_counter when an engine-thread issue returned (0: untimed)
    first_poll: float = 0.0  # perf_counter of the first poll that looked at it
    polls_waiting: int = 0  # polls that found it still running on the device


@dataclass
class SlabLoad:
    """A slab load issued to the device: which blocks it moved and how to learn which failed.

    ``missing``: blocks whose slot held another block (never copied); ``ids``: the blocks
    copied and checked on the device, whose verdicts land in ``host_ok`` once ``done``."""

    runtime: ConnectorRuntime
    missing: list[int]
    ids: list[int]
    host_ok: Any  # pinned bool tensor, one per block of ``ids`` (None: nothing copied)
    done: Any  # CUDA event after the last scatter (None: on a CPU device, already done)
    keep: tuple[Any, ...]  # device buffers the copies still read or write
    start: float
    nbytes: int
    error: str = ""  # why nothing was issued (every block then fails)
    issued: float = 0.0  # perf_counter when the issue returned
    queued: Any = None  # a timing event recorded on the load stream before it waits (CUDA)
    began: Any = None  # a timing event recorded after that wait, before the copies (CUDA)
    _failed: list[int] | None = None

    def failed(self) -> list[int]:
        """The blocks that failed (missing, or their sum wrong), after waiting for this load
        alone; its bytes and time go into the runtime's load metrics once."""
        if self._failed is None:
            if self.done is not None:
                self.done.synchronize()
            verdicts = self.host_ok.tolist() if self.host_ok is not None else []
            bad = [b for b, ok in zip(self.ids, verdicts, strict=True) if not ok]
            self._failed = self.missing + bad
            rt = self.runtime
            now = time.perf_counter()
            seconds = now - self.start
            device_ms = self.began.elapsed_time(self.done) if self.began is not None else 0.0
            ready_ms = self.queued.elapsed_time(self.began) if self.queued is not None else 0.0
            with rt.metrics._lock:
                good = self.nbytes * (len(self.ids) - len(bad)) // max(len(self.ids), 1)
                rt.metrics.load.add(good, seconds)
                rt.metrics.load.add_copy(good, seconds)
                if self.issued:
                    rt.metrics.slab_load.add((self.issued - self.start) * 1e3, ready_ms,
                                             device_ms, (now - self.issued) * 1e3)
            self.keep = ()
        return self._failed


@dataclass
class SlabLoadPlan:
    """A slab load's first half, done at once: the blocks whose slots hold them (``ids`` in
    ``slots``), the rest (``missing``), the sums their copies must match (planes x ids)."""

    missing: list[int]
    ids: list[int]
    slots: list[int]
    sums: Any  # numpy int64, planes x len(ids)
    start: float  # perf_counter when the load began


@dataclass
class _GroupState:
    """The transfers of one save group or one request's load."""

    pending: int = 0  # transfers queued and not ended
    queued: int = 0  # transfers ever queued (layers)
    sealed: bool = False  # no more transfers will join (loads: at once; saves: ``seal``)
    failed_blocks: set[int] = field(default_factory=set)
    failed: bool = False


def word_view(blocks: torch.Tensor) -> torch.Tensor:
    """``blocks`` (rows of bytes) viewed as the widest words that divide rows and alignment.

    Gather/scatter kernels address one element per thread step; moving 8-byte words instead of
    bytes hands them an eighth of the elements for the same bytes.
    """
    for dtype in (torch.int64, torch.int32, torch.int16):
        size = dtype.itemsize
        if blocks.shape[-1] % size == 0 and blocks.storage_offset() % size == 0:
            return blocks.view(dtype)
    return blocks


@dataclass
class PollResult:
    """What finished since the last poll. A save group is ok only if it was sealed and every
    block of every layer committed."""

    saves_ok: set[str] = field(default_factory=set)
    saves_failed: set[str] = field(default_factory=set)
    loads_done: set[str] = field(default_factory=set)
    failed_load_blocks: set[int] = field(default_factory=set)

    def merge(self, other: PollResult) -> None:
        self.saves_ok |= other.saves_ok
        self.saves_failed |= other.saves_failed
        self.loads_done |= other.loads_done
        self.failed_load_blocks |= other.failed_load_blocks


class ConnectorRuntime:
    """Moves KV blocks between the paged KV cache of one worker and a backend."""

    def __init__(self, backend: KVBackend | HostSlab, kv_caches: Sequence[torch.Tensor],
                 device: torch.device | str, staging_blocks: int = 256,
                 name: str = "kv-connector", hold_saves: bool = False) -> None:
        self.backend = backend
        self.slab = backend if isinstance(backend, HostSlab) else None
        self.hold_saves = hold_saves
        self._held: list[_Job] = []
        self.kv_caches = list(kv_caches)
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.block_nbytes = self._check_layout()
        if self.block_nbytes != backend.block_nbytes:
            raise ValueError(f"backend blocks are {backend.block_nbytes} bytes, KV blocks are "
                             f"{self.block_nbytes}")
        if self.slab is not None and self.slab.planes != len(self.kv_caches):
            raise ValueError(f"the slab has {self.slab.planes} planes, there are "
                             f"{len(self.kv_caches)} KV planes")
        if staging_blocks < 1:
            raise ValueError("staging_blocks must be >= 1")
        self.staging_blocks = staging_blocks
        self._block_views: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._slab_views: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        self.metrics = ConnectorMetrics()
        self.timeline = Timeline()  # off; the vLLM connector sets its own (``trace``)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._saves: dict[str, _GroupState] = {}
        self._loads: dict[str, _GroupState] = {}
        self._done = PollResult()
        self._unread_saves = 0  # saves whose blocks have not been copied out of the KV cache yet
        # (event after a completed load's last write, its planes, the block ids it wrote), for
        # the next forward's wait (``_offer_load_wait``)
        self._load_waits_kept = MAX_LOAD_WAITS_A_PLANE * max(1, len(self.kv_caches))
        self._loads_done: deque[tuple[Any, tuple[int, ...], list[int]]] = deque(
            maxlen=self._load_waits_kept)
        # slab loads issued by the engine thread itself (``load_planes``), retired by ``poll``
        # (and ``shutdown``: the lock makes each retirement happen once, whoever calls)
        self._issued: deque[_InFlight] = deque()
        # held slab saves, issued by the engine thread at ``seal`` and retired by ``poll``
        # (apart from the loads: a long save must not hold up a finished load's report)
        self._issued_saves: deque[_InFlight] = deque()
        self._issued_lock = threading.Lock()
        self._load_stream = (torch.cuda.Stream(self.device)
                             if self.is_cuda and self.slab is not None else None)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise RuntimeError(f"connector worker failed to start: {self._startup_error!r}")

    # ---- layout -------------------------------------------------------------------------

    def _check_layout(self) -> int:
        if not self.kv_caches:
            raise ValueError("no KV cache layers given")
        sizes = set()
        for layer, kv in enumerate(self.kv_caches):
            if kv.device != self.device:
                raise ValueError(
                    f"layer {layer} lives on {kv.device}, the runtime on {self.device}")
            if not kv.is_contiguous():
                raise ValueError(f"layer {layer}'s KV cache is not contiguous")
            sizes.add(kv[0].numel() * kv.element_size())
        if len(sizes) != 1:
            raise ValueError(f"layers have different block sizes: {sorted(sizes)}")
        return sizes.pop()

    def _blocks(self, layer: int) -> torch.Tensor:
        """The layer's KV as one row per block, in the widest words its layout allows; made
        once per KV tensor (a slab transfer asks for every plane, and views cost torch calls
        on the engine's thread)."""
        kv = self.kv_caches[layer]
        made = self._block_views.get(layer)
        if made is None or made[0] is not kv:
            made = self._block_views[layer] = (
                kv, word_view(kv.view(kv.shape[0], -1).view(torch.uint8)))
        return made[1]

    def _slab_plane(self, plane: int, dtype: torch.dtype) -> torch.Tensor:
        """Every slot of one slab plane as rows of ``dtype`` words, made once."""
        slab = self.slab
        assert slab is not None
        view = self._slab_views.get((plane, dtype))
        if view is None:
            view = self._slab_views[(plane, dtype)] = slab.rows(plane, 0, slab.capacity, dtype)
        return view

    def _check_groups(self, planes: Sequence[int]) -> list[list[tuple[int, int, torch.Tensor]]]:
        """``planes`` as runs of at most :data:`CHECK_PLANES` consecutive planes that share
        a word layout: ``(position in planes, plane, its blocks)``. A slab transfer moves
        each run through one device buffer and sums it in one call, where one buffer and
        one sum per plane cost the engine's thread some ten torch calls a plane."""
        groups: list[list[tuple[int, int, torch.Tensor]]] = []
        layout = None
        for i, plane in enumerate(planes):
            blocks = self._blocks(plane)
            this = (blocks.dtype, blocks.shape[1])
            if this != layout or len(groups[-1]) == CHECK_PLANES:
                groups.append([])
                layout = this
            groups[-1].append((i, plane, blocks))
        return groups

    def _run_buffer(self, buffers: dict[tuple[torch.dtype, int, int], torch.Tensor],
                    planes: int, blocks: int, like: torch.Tensor) -> torch.Tensor:
        """A device buffer for a run of ``planes`` planes of ``blocks`` rows shaped like
        ``like``'s, one per run shape in a transfer (``buffers``): made and used on the
        transfer's stream only, so a later run's work into it follows the earlier run's out
        of it, and the caching allocator hands it out again only to work queued after."""
        key = (like.dtype, planes, like.shape[1])
        buffer = buffers.get(key)
        if buffer is None:
            buffer = buffers[key] = torch.empty((planes, blocks, like.shape[1]),
                                                dtype=like.dtype, device=self.device)
        return buffer

    # ---- engine-side API: never blocks ----------------------------------------------------

    def save_layer(self, group: str, layer: int, block_ids: Sequence[int],
                   keys: Sequence[str], slots: Sequence[int] | None = None) -> None:
        """Queue a save of ``block_ids`` of ``layer`` into save ``group``; the forward just
        wrote them. The group is reported (``poll``) once sealed and every transfer ended.
        With a slab, ``slots`` (the scheduler's placement) say where each block goes."""
        if len(block_ids) != len(keys):
            raise ValueError("one key per block")
        self._check_slots(block_ids, slots)
        admitted = self._admit_save(group, [layer], block_ids)
        if admitted is None:
            return
        ready, handoffs = admitted
        tags = [key_tag(k) for k in keys] if self.slab is not None else []
        self._queue_save(_Job("save", group, layer, list(block_ids), list(keys), ready=ready,
                              handoffs=handoffs, slots=list(slots or ()), tags=tags))

    def _engine_mark(self) -> Any:
        """An event recorded now on the engine's current stream (None on a CPU device)."""
        if not self.is_cuda:
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    def _blocksets(self, planes: Sequence[int], block_ids: Sequence[int]) -> list[BlockSet]:
        """``block_ids`` of each plane as streamcheck names them (what a load launch writes);
        nothing, and no cost, when it is not auditing."""
        if streamcheck.current_auditor() is None:
            return []
        ids = frozenset(block_ids)
        return [BlockSet(self.kv_caches[p], ids) for p in planes]

    def _declare(self, planes: Sequence[int], block_ids: Sequence[int], access: str,
                 stream: Any = None) -> tuple[Any, ...]:
        """Declare to streamcheck an access to ``block_ids`` of each plane (on ``stream``,
        default the thread's current one); nothing on a CPU device or when not auditing."""
        if not self.is_cuda:
            return ()
        return streamcheck.handoffs(self._blocksets(planes, block_ids), stream, access)

    def _admit_save(self, group: str, planes: Sequence[int], block_ids: Sequence[int]
                    ) -> tuple[Any, tuple[Any, ...]] | None:
        """Count one more layer into ``group`` (refused once it is sealed). For a layer with
        blocks to move: ``(event, handoffs)``, the event recorded on the engine's current
        (compute) stream that the copy will wait on, and streamcheck's records of the blocks
        the forward handed off; None when there is nothing to move or the group already
        failed."""
        has_blocks = bool(block_ids)
        ready, handoffs = None, ()
        if self.is_cuda and has_blocks:
            handoffs = self._declare(planes, block_ids, "write")
            ready = self._engine_mark()
        with self._lock:
            state = self._saves.setdefault(group, _GroupState())
            if state.sealed:
                raise ValueError(f"save group {group!r} was already sealed")
            state.queued += 1
            if not has_blocks:
                return None
            if state.failed:
                # its KV is known wrong (a failed sync load, reported before the step's saves
                # were queued under speculative decoding): counted, never issued
                self.metrics.failed_saves += 1
                return None
            state.pending += 1
            self._unread_saves += 1
        return ready, handoffs

    def _queue_save(self, job: _Job) -> None:
        """To the worker now, or (``hold_saves``) at the next :meth:`seal`: then the worker's
        Python runs after the forward instead of taking the GIL from it mid-step; the copy is
        ordered after the forward's writes by the handoff event either way."""
        if self.hold_saves:
            with self._lock:
                self._held.append(job)
        else:
            self._jobs.put(job)

    def _release_held(self) -> None:
        """Send the held saves on. Slab saves are issued here, on the calling (engine)
        thread, and retired by ``poll``, as slab loads are: given to the worker thread, a
        request's save (some hundred torch calls for 32 planes) ran while the engine's next
        step ran Python, each call handing the GIL back and forth, and that step took 17 ms
        instead of 10 (docs/measurements.md); issued here it costs the engine the calls alone."""
        with self._lock:
            held, self._held = self._held, []
            jobs = self._merge_held_saves(held)
        for job in jobs:
            if self.slab is not None and job.kind == "save" and not self._closed:
                self._issue_here(job, self._issued_saves, lambda job=job: self._slab_save(job))
            else:
                self._jobs.put(job)

    def _issue_here(self, job: _Job, into: deque[_InFlight],
                    issue: Callable[[], _InFlight | None]) -> None:
        """Issue ``job`` on the calling (engine) thread and keep it in ``into`` for ``poll``
        to retire: checked against ``shutdown`` and kept under the lock it drains with (one
        issued after its drain would never be retired, so it fails instead)."""
        with self._issued_lock:
            if self._closed:
                self._finish(job, ok=False, error="the connector was shut down")
                return
            self.timeline.note(f"{job.kind}.issue", job.group)
            issued = self._run_job(job, issue)
            if issued is not None:
                into.append(issued)
            self.timeline.note(f"{job.kind}.issued", job.group)

    def _merge_held_saves(self, held: list[_Job]) -> list[_Job]:
        """Held slab saves of one group into the same blocks and slots, as one job for all
        their planes (the caller holds the lock): a step's saves reach the worker as one job
        per request instead of one per layer, so the worker's Python (a job's index, events,
        bookkeeping) runs once while the engine's next step wants the GIL. The merged job
        waits for every layer's ready event; its group counts it as one transfer."""
        if self.slab is None:
            return held
        first: dict[tuple[str, tuple[int, ...], tuple[int, ...]], _Job] = {}
        out: list[_Job] = []
        for job in held:
            key = (job.group, tuple(job.block_ids), tuple(job.slots))
            into = first.get(key) if job.kind == "save" and job.planes else None
            if into is None or job.tags != into.tags:
                if job.kind == "save" and job.planes:
                    first.setdefault(key, job)
                out.append(job)
                continue
            into.planes = into.planes + job.planes
            into.handoffs = into.handoffs + job.handoffs
            into.also_ready = (*into.also_ready, job.ready)
            self._saves[job.group].pending -= 1
            self._unread_saves -= 1
        return out

    def save_planes(self, group: str, planes: Sequence[int], block_ids: Sequence[int],
                    slots: Sequence[int], tags: Sequence[int]) -> None:
        """Slab only: one save of ``block_ids`` of every plane in ``planes`` (a layer's K and
        V) into ``slots``; ``tags`` name each block (the same in every plane). One handoff, one
        event and one job for the layer, where :meth:`save_layer` makes one of each per plane:
        this is the engine's hot path, once per layer per step."""
        if self.slab is None:
            raise ValueError("save_planes needs the host slab")
        if len(block_ids) != len(tags):
            raise ValueError("one tag per block")
        self._check_slots(block_ids, slots)
        admitted = self._admit_save(group, planes, block_ids)
        if admitted is None:
            return
        ready, handoffs = admitted
        self._queue_save(_Job("save", group, planes[0], list(block_ids), [], ready=ready,
                              handoffs=handoffs, slots=list(slots), planes=list(planes),
                              tags=list(tags)))

    def load_planes(self, req_id: str, planes: Sequence[int], block_ids: Sequence[int],
                    slots: Sequence[int], tags: Sequence[int]) -> None:
        """Slab only: load ``block_ids`` of every plane from ``slots`` as ONE transfer (one
        index, one check, one completion event); completion shows in ``poll``.

        Issued here, on the calling (engine) thread, on the runtime's load stream after the
        engine's stream as it is now, and retired by ``poll`` (the engine's ``get_finished``)
        once its event completed: the copies are the copy engine's work, so no thread needs
        to wait for them. A worker thread in between adds a hand-over, its own wake-ups, and a
        GIL hand-back after each of its torch calls while the engine's loop runs Python
        (docs/measurements.md has the warm TTFT before and after, on different hosts).
        """
        if self.slab is None:
            raise ValueError("load_planes needs the host slab")
        self._check_slots(block_ids, slots)
        if not block_ids or not planes:
            self._queue_loads(req_id, [])  # nothing to move: done now
            return
        job = _Job("load", req_id, planes[0], list(block_ids), [], slots=list(slots),
                   planes=list(planes), tags=list(tags), ready=self._engine_mark())
        with self._lock:
            state = self._loads.setdefault(req_id, _GroupState(sealed=True))
            state.pending += 1
            state.queued += 1
        self._issue_here(job, self._issued,
                         lambda: self._slab_load(job, self._load_stream, polled=True))

    def _check_slots(self, block_ids: Sequence[int], slots: Sequence[int] | None) -> None:
        if self.slab is None:
            return
        if slots is None or len(slots) != len(block_ids):
            raise ValueError("a slab store needs one slot per block (the scheduler's placement)")
        if slots and (min(slots) < 0 or max(slots) >= self.slab.capacity):
            raise ValueError(f"slots must lie in 0..{self.slab.capacity - 1}")

    def fail_groups(self, groups: Iterable[str]) -> None:
        """Report ``groups`` failed whatever their transfers do (their KV is known wrong):
        held saves of them are dropped unissued, issued ones end but commit nothing."""
        names = set(groups)
        if not names:
            return
        with self._lock:
            dropped = [job for job in self._held if job.group in names]
            self._held = [job for job in self._held if job.group not in names]
            for name in names:
                self._saves.setdefault(name, _GroupState()).failed = True
            for job in dropped:
                state = self._saves[job.group]
                state.pending -= 1
                job.read = True  # never issued: it reads nothing
                self._unread_saves -= 1
                self._settle(job.group, state, self._saves)
            self.metrics.failed_saves += len(dropped)

    def seal(self, groups: Iterable[str]) -> None:
        """No more layers join ``groups``; each is reported once its transfers ended. A group
        sealed with no layer queued is reported failed: nothing of it was saved. Held saves
        (``hold_saves``) go to the worker now."""
        self._release_held()
        with self._lock:
            for group in groups:
                state = self._saves.setdefault(group, _GroupState())
                state.failed |= state.queued == 0
                state.sealed = True
                self._settle(group, state, self._saves)

    def start_load(self, req_id: str, layer_block_keys: dict[int, tuple[list[int], list[str]]],
                   slots: Sequence[int] | None = None) -> None:
        """Queue loads for ``{layer: (block_ids, keys)}``; completion shows in ``poll``. With
        a slab, ``slots`` (one per block, the same for every layer) say where blocks are."""
        for ids, _keys in layer_block_keys.values():
            self._check_slots(ids, slots)
        slab = self.slab is not None
        self._queue_loads(req_id, [
            _Job("load", req_id, layer, list(ids), list(keys), slots=list(slots or ()),
                 tags=[key_tag(k) for k in keys] if slab else [])
            for layer, (ids, keys) in layer_block_keys.items() if ids])

    def _queue_loads(self, req_id: str, jobs: list[_Job]) -> None:
        """Register every job of one request's load before queueing any, so the load cannot
        be reported done while part of it is still unqueued; nothing to load is done now."""
        if not jobs:
            with self._lock:
                self._done.loads_done.add(req_id)
            return
        ready = self._engine_mark()  # what the forward queued so far, reads of these blocks too
        for job in jobs:
            job.ready = ready
        with self._lock:
            state = self._loads.setdefault(req_id, _GroupState(sealed=True))
            state.pending += len(jobs)
            state.queued += len(jobs)
        for job in jobs:
            self._jobs.put(job)

    def wait_for_loads(self) -> None:
        """Order the engine's current stream after every load completed since the last call
        and declare the reads of their blocks, once a step (vLLM's ``start_load_kv``), before
        any forward that reads them: a load is offered here only once the host saw it complete
        (:meth:`_offer_load_wait`) and reported to vLLM, which schedules its request, only
        after that, so its blocks are read in a later step. (vLLM 0.24 calls ``start_load_kv``
        before the step's forward, vLLM 0.33 after it unless the step has sync loads: either
        way the reading forward comes after.) The waits cost the device nothing, so no layer
        needs one of its own: done a layer at a time, in vLLM's per-layer
        ``wait_for_layer_load``, it added host work to every layer of a forward whose length,
        under piecewise CUDA graphs, the host's per-layer work sets. One stream read, one wait
        per event, one declaration; with nothing completed, a lock and no stream read."""
        if not self.is_cuda:
            return
        with self._lock:
            loaded, self._loads_done = self._loads_done, deque(maxlen=self._load_waits_kept)
        if not loaded:
            return
        stream = torch.cuda.current_stream(self.device)
        waited: set[int] = set()
        for event, _planes, _ids in loaded:
            if id(event) not in waited:
                waited.add(id(event))
                stream.wait_event(event)
        # the forward reads the loaded blocks after this, on this stream: a later write of
        # them (a load after the blocks were freed and handed to another request) must wait
        if streamcheck.current_auditor() is not None:
            streamcheck.handoffs([BlockSet(self.kv_caches[plane], frozenset(ids))
                                  for _event, planes, ids in loaded for plane in planes],
                                 stream, "read")

    def poll(self, wait_loads_s: float = 0.0) -> PollResult:
        """What finished since the last poll. Never blocks, unless ``wait_loads_s``: then
        the loads the caller issued are waited for, up to that long."""
        with self.metrics._lock:
            self.metrics.polls += 1
        with self._issued_lock:
            self.timeline.note("poll", len(self._issued))
            self._retire(self._issued, block=False)
            self._retire(self._issued_saves, block=False)
            if wait_loads_s > 0 and self._issued:
                self.timeline.note("poll.wait", len(self._issued))
                self._retire_within(self._issued, wait_loads_s)
        with self._lock:
            done, self._done = self._done, PollResult()
        return done

    def _retire_within(self, in_flight: deque[_InFlight], seconds: float) -> bool:
        """Retire ``in_flight`` transfers as they complete, for up to ``seconds``; whether
        none is left. It sleeps between queries (a few tens of microseconds each): the worker
        thread keeps the GIL meanwhile, and one still running at the deadline stays issued."""
        deadline = time.perf_counter() + seconds
        while in_flight:
            head = in_flight[0]
            if head.done is None or head.done.query():
                self._retire(in_flight, block=False)
            elif time.perf_counter() >= deadline:
                return False
            else:
                time.sleep(0.00005)
        return True

    def flush(self, timeout: float = 60.0) -> None:
        """Block until every queued save has copied its blocks out of the KV cache.

        Used before vLLM reuses blocks (preemption). It waits for the device-side reads only,
        not for the backend to store them: the copies already sit in pinned staging.
        """
        self._release_held()
        deadline = time.time() + timeout
        with self._issued_lock:  # the saves this thread issued: nothing else retires them
            if not self._retire_within(self._issued_saves, timeout):
                raise TimeoutError("connector saves did not finish reading their blocks in time")
        while time.time() < deadline:
            with self._lock:
                if self._unread_saves == 0:
                    return
            time.sleep(0.0005)
        raise TimeoutError("connector saves did not finish reading their blocks in time")

    def _mark_read(self, job: _Job) -> None:
        if job.kind == "save" and not job.read:
            job.read = True
            with self._lock:
                self._unread_saves -= 1

    def pending(self) -> int:
        with self._lock:
            return sum(s.pending for s in self._saves.values()) + sum(
                s.pending for s in self._loads.values())

    def lookup(self, keys: Sequence[str]) -> int:
        """How many leading keys are present (a prefix hit), from the backend's answer."""
        present = self.backend.lookup(keys) if keys else []
        hits = 0
        for ok in present:
            if not ok:
                break
            hits += 1
        with self.metrics._lock:
            self.metrics.lookup_hits += hits
            self.metrics.lookup_misses += len(keys) - hits
        return hits

    def shutdown(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Finish (drain) or drop queued work, stop the worker, close the backend."""
        if self._closed:
            return
        self._closed = True
        self._release_held()
        if not drain:
            try:
                while True:
                    job = self._jobs.get_nowait()
                    if job is not None:
                        self._finish(job, ok=False, error="cancelled at shutdown")
            except queue.Empty:
                pass
        try:
            with self._issued_lock:  # on the device already: they run to the end either way
                for issued in (self._issued, self._issued_saves):
                    while issued:
                        self._retire(issued, block=True)
        finally:  # the worker is told to stop even if waiting for the device failed
            self._jobs.put(None)
            self._thread.join(timeout)
        if self._thread.is_alive():
            # Closing the backend under a running transfer would fail it half-way; say so.
            raise TimeoutError(f"connector worker still busy after {timeout:.0f} s; the backend "
                               "was left open")
        self.backend.close()

    # ---- worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.is_cuda:
                torch.cuda.set_device(self.device)  # a new thread starts on cuda:0
                self._stream = torch.cuda.Stream(self.device)
                self._scatter_stream = torch.cuda.Stream(self.device)
            else:
                self._stream = self._scatter_stream = None
            self._staging = torch.empty(self.staging_blocks, self.block_nbytes, dtype=torch.uint8,
                                        pin_memory=self.is_cuda)
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        in_flight: deque[_InFlight] = deque()
        while True:
            try:
                job = self._jobs.get(timeout=0.0002) if in_flight else self._jobs.get()
            except queue.Empty:  # nothing new: wait for the oldest transfer instead
                self._retire(in_flight, block=True)
                continue
            if job is None:
                while in_flight:
                    self._retire(in_flight, block=True)
                return
            self.timeline.note("job", job.kind, job.group)
            issued = self._run_job(job, lambda job=job: self._do_job(job))
            if issued is not None:
                in_flight.append(issued)
            self.timeline.note("job.issued", job.group)
            self._retire(in_flight, block=len(in_flight) > MAX_IN_FLIGHT)

    def _do_job(self, job: _Job) -> _InFlight | None:
        """One queued job, on the worker thread: slab transfers are issued (the returned
        in-flight retires them), a backend's run to the end here."""
        if self.slab is not None:
            return self._slab_save(job) if job.kind == "save" else self._slab_load(job,
                                                                                   self._stream)
        if job.kind == "save":
            self._do_save(job)
        else:
            self._do_load(job)
        return None

    def _run_job(self, job: _Job, work: Callable[[], _InFlight | None]) -> _InFlight | None:
        """``work()`` for ``job``; a transfer that fails or that streamcheck stops ends the
        job as failed (its blocks are recomputed) and never reaches the caller."""
        try:
            return work()
        except streamcheck.StreamHazardError as exc:
            with self.metrics._lock:
                self.metrics.hazards_stopped += 1
            self._fail_job(job, f"stopped by streamcheck: {exc.rule_ids}")
        except Exception as exc:  # a failed transfer must never take the worker down
            self._fail_job(job, f"{type(exc).__name__}: {exc}")
        return None

    def _fail_job(self, job: _Job, error: str) -> None:
        """End ``job`` as failed. A load that failed part way may have queued some of its
        writes into the KV cache already, and none of them is tied to an event the forward
        waits on: vLLM recomputes the failed blocks on its own stream as soon as the failure
        is reported, so the copies still queued would race its writes into the same blocks
        (a block left with some layers loaded and some recomputed). Its streams are drained
        first; a failure is rare, the wait is short."""
        if job.kind == "load":
            for stream in (self._load_stream, getattr(self, "_stream", None),
                           getattr(self, "_scatter_stream", None)):
                if stream is not None:
                    stream.synchronize()
        self._finish(job, ok=False, error=error)

    def _retire(self, in_flight: deque[_InFlight], block: bool) -> None:
        """Finish the issued transfers that completed, oldest first (the oldest one at least,
        waiting for it, when ``block``)."""
        while in_flight:
            head = in_flight[0]
            if head.issued_at and not head.first_poll:
                head.first_poll = time.perf_counter()
            if head.done is not None and not head.done.query():
                if not block:
                    head.polls_waiting += 1
                    return
                head.done.synchronize()
            in_flight.popleft()
            block = False
            self.timeline.note("retire", head.job.kind, head.job.group)
            if head.issued_at:
                with self.metrics._lock:
                    self.metrics.slab_load.polled((head.first_poll - head.issued_at) * 1e3,
                                                  head.polls_waiting)
            try:
                head.retire()
            except Exception as exc:
                self._finish(head.job, ok=False, error=f"{type(exc).__name__}: {exc}")

    def _chunks(self, job: _Job) -> list[tuple[list[int], list[str]]]:
        n = self.staging_blocks
        return [(job.block_ids[i:i + n], job.keys[i:i + n]) for i in range(0, len(job.keys), n)]

    def _index(self, ids: Sequence[int], stream: Any = None) -> torch.Tensor:
        """Block ids as an index on our device, made on ``stream`` (default: ours)."""
        if not self.is_cuda:
            return torch.tensor(ids)
        return self._upload(torch.tensor(ids, dtype=torch.int64), stream)

    def _upload(self, host: torch.Tensor, stream: Any = None) -> torch.Tensor:
        """A small host tensor to our device, asynchronously on ``stream`` (default: ours).

        Through pinned memory: a copy from pageable memory first waits for everything queued
        on the stream, which would serialise each transfer behind the previous one's copies.
        (PyTorch's pinned allocator keeps the buffer until the copy has run.)
        """
        with torch.cuda.stream(stream if stream is not None else self._stream):
            return host.pin_memory().to(self.device, non_blocking=True)

    @staticmethod
    def _backend_rows(call: Any, keys: Sequence[str], staged: torch.Tensor
                      ) -> list[TransferResult]:
        """``call(key, row)`` for every key and its staging row; returns when every transfer
        ended (the staging rows are reused next). A call that raises fails its own block only.
        All calls are issued before the first wait, so an asynchronous backend overlaps them."""
        transfers: list[Any] = []
        for key, row in zip(keys, staged, strict=True):
            try:
                transfers.append(call(key, memoryview(row.numpy())))
            except Exception as exc:
                transfers.append(TransferResult(TransferState.FAILED,
                                                error=f"{type(exc).__name__}: {exc}"))
        return [t if isinstance(t, TransferResult) else t.wait() for t in transfers]

    def _do_save(self, job: _Job) -> None:
        start = time.perf_counter()
        blocks = self._blocks(job.layer)
        errors = []
        nbytes = 0
        chunks = self._chunks(job)
        for n, (ids, keys) in enumerate(chunks):
            staged = self._staging[:len(ids)]
            index = self._index(ids)
            if self.is_cuda:
                self._stream.wait_event(job.ready)  # the forward's writes come first
                self._stream.synchronize()  # so the copy timing below is the copy alone
                copy_start = time.perf_counter()
                with torch.cuda.stream(self._stream):
                    with streamcheck.launch("connector.save.gather", stream=self._stream,
                                            device=self.device.index,
                                            reads=job.handoffs):
                        gathered = blocks.index_select(0, index)  # device-side gather
                        staged.view(blocks.dtype).copy_(gathered, non_blocking=True)
                    copied = torch.cuda.Event()
                    copied.record()
                copied.synchronize()  # this worker thread waits; the engine does not
                with self.metrics._lock:
                    self.metrics.save.add_copy(staged.numel(), time.perf_counter() - copy_start)
            else:
                staged.view(blocks.dtype).copy_(blocks.index_select(0, index))
            if n == len(chunks) - 1:
                self._mark_read(job)  # the last chunk is in staging: the KV cache is free
            for key, result in zip(keys, self._backend_rows(self.backend.save, keys, staged),
                                   strict=True):
                if result.state is not TransferState.DONE:
                    errors.append(f"{key}: {result.error}")
                else:
                    nbytes += result.nbytes
        with self.metrics._lock:
            self.metrics.save.add(nbytes, time.perf_counter() - start)
        self._finish(job, ok=not errors, error="; ".join(errors[:3]))

    def _do_load(self, job: _Job) -> None:
        start = time.perf_counter()
        blocks = self._blocks(job.layer)
        failed: list[int] = []
        errors: list[str] = []
        nbytes = 0
        for ids, keys in self._chunks(job):
            staged = self._staging[:len(ids)]
            good_rows, good_ids = [], []
            results = self._backend_rows(self.backend.load, keys, staged)
            for row, (block, key, result) in enumerate(zip(ids, keys, results, strict=True)):
                if result.state is TransferState.DONE:
                    good_rows.append(row)
                    good_ids.append(block)
                    nbytes += result.nbytes
                else:
                    failed.append(block)  # never scattered: vLLM recomputes these blocks
                    errors.append(f"{key}: {result.error}")
            if not good_ids:
                continue
            source = staged if len(good_rows) == len(ids) else staged[good_rows]
            source = source.view(blocks.dtype)
            index = self._index(good_ids)
            if self.is_cuda:
                copy_start = time.perf_counter()
                self._scatter_stream.wait_event(job.ready)  # the forward's reads come first
                done = self._upload_and_scatter(blocks, source, index,
                                                self._blocksets([job.layer], good_ids))
                done.synchronize()  # the staging buffer is reused next chunk
                with self.metrics._lock:
                    self.metrics.load.add_copy(source.numel() * source.element_size(),
                                               time.perf_counter() - copy_start)
                self._offer_load_wait([job.layer], done, good_ids)
            else:
                blocks.index_copy_(0, index, source)
        with self.metrics._lock:
            self.metrics.load.add(nbytes, time.perf_counter() - start)
        self._finish(job, ok=not failed,
                     error=f"{len(failed)} block(s) failed: " + "; ".join(errors[:3]),
                     failed_blocks=failed)

    def _upload_and_scatter(self, blocks: torch.Tensor, source: torch.Tensor,
                            index: torch.Tensor, written: list[BlockSet]) -> torch.cuda.Event:
        """Copy pinned ``source`` rows to the device and scatter them into ``blocks[index]``.

        In ``LOAD_PIECES`` pieces: host copies on the transfer stream, scatter kernels on the
        scatter stream, each scatter waiting for its own piece's copy, so the scatter of one
        piece runs while the copy engine moves the next. Returns the event after the last
        scatter (what the forward waits on).
        """
        pieces = []
        rows = source.shape[0]
        bounds = sorted({rows * k // LOAD_PIECES for k in range(LOAD_PIECES + 1)})
        for lo, hi in itertools.pairwise(bounds):
            with torch.cuda.stream(self._stream):
                with streamcheck.launch("connector.load.copy", stream=self._stream,
                                        device=self.device.index):
                    on_device = source[lo:hi].to(self.device, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record()
            self._scatter_stream.wait_event(copied)
            with torch.cuda.stream(self._scatter_stream), streamcheck.launch(
                    "connector.load.scatter", stream=self._scatter_stream,
                    device=self.device.index, writes=written):
                blocks.index_copy_(0, index[lo:hi], on_device)
            pieces.append(on_device)  # alive until the caller synchronizes on ``done``
        done = torch.cuda.Event()
        done.record(self._scatter_stream)
        return done

    # ---- slab transfers: issued to the device, retired when their event completes ----------

    def _slab_save(self, job: _Job) -> _InFlight:
        """Gather each plane's blocks on the device, sum them, copy each run of slots straight
        into the pinned slab; the slots are committed (tags, sums) when the copies completed.
        One job covers every plane of a layer (or of a request): one index, one audit check."""
        slab = self.slab
        assert slab is not None
        start = time.perf_counter()
        planes = job.planes or [job.layer]
        spans = runs(job.slots)
        for plane in planes:
            slab.forget(plane, job.slots)
        index = self._index(job.block_ids)
        n = len(job.block_ids)
        done = None
        keep: list[Any] = [index]
        if self.is_cuda:
            host_sums = torch.empty((len(planes), n), dtype=torch.int64, pin_memory=True)
            with torch.cuda.stream(self._stream):
                for ready in (job.ready, *job.also_ready):
                    self._stream.wait_event(ready)  # the forward's writes come first
                with streamcheck.launch("connector.save.gather", stream=self._stream,
                                        device=self.device.index, reads=job.handoffs):
                    sums = torch.empty((len(planes), n), dtype=torch.int64, device=self.device)
                    # not kept past the issue (see _run_buffer): a save of every plane of a
                    # request would otherwise hold its whole KV until it completed
                    buffers: dict[tuple[torch.dtype, int, int], torch.Tensor] = {}
                    for group in self._check_groups(planes):  # a buffer and a sum per run
                        first_i, _, blocks = group[0]
                        gathered = self._run_buffer(buffers, len(group), n, blocks)
                        for j, (_, _, plane_blocks) in enumerate(group):
                            torch.index_select(plane_blocks, 0, index, out=gathered[j])
                        block_sums(gathered.view(-1, blocks.shape[1]),
                                   out=sums[first_i:first_i + len(group)].view(-1))
                        for j, (_, plane, _) in enumerate(group):
                            rows = self._slab_plane(plane, blocks.dtype)
                            for pos, first, count in spans:
                                rows[first:first + count].copy_(gathered[j, pos:pos + count],
                                                                non_blocking=True)
                    host_sums.copy_(sums, non_blocking=True)
                    keep.append(sums)
                done = torch.cuda.Event()
                done.record()
        else:
            host_sums = torch.empty((len(planes), n), dtype=torch.int64)
            for i, plane in enumerate(planes):
                gathered = self._blocks(plane).index_select(0, index)
                host_sums[i] = block_sums(gathered)
                for pos, first, count in spans:
                    slab.rows(plane, first, count, gathered.dtype).copy_(
                        gathered[pos:pos + count])
        nbytes = len(planes) * n * self.block_nbytes

        def retire() -> None:
            sums_now = host_sums.numpy()
            for i, plane in enumerate(planes):
                slab.commit(plane, job.slots, job.tags, sums_now[i])
            self._mark_read(job)
            seconds = time.perf_counter() - start
            with self.metrics._lock:
                self.metrics.save.add(nbytes, seconds)
                self.metrics.save.add_copy(nbytes, seconds)
            self._finish(job, ok=True)

        return _InFlight(done, retire, job, tuple(keep))

    def _offer_load_wait(self, planes: Sequence[int], done: Any, ids: list[int]) -> None:
        """A load of ``ids`` into ``planes`` completed (``done`` is its last event): the next
        :meth:`wait_for_loads` orders its stream after it, at no cost on the device (the event
        has completed), and declares the forward's reads of those blocks. Offered only once
        complete: a forward of other requests queued while a load is in flight must not wait
        for it. The latest :data:`MAX_LOAD_WAITS_A_PLANE` a plane of the KV cache are kept."""
        with self._lock:
            self._loads_done.append((done, tuple(planes), ids))

    def _slab_load(self, job: _Job, stream: Any, plan: SlabLoadPlan | None = None,
                   polled: bool = False) -> _InFlight | None:
        """An asynchronous load, issued on ``stream`` after the engine's stream as it was when
        the load was asked for (``job.ready``); once retired, the next forward waits for it
        (:meth:`wait_for_loads`, :meth:`_offer_load_wait`). ``plan``: which slots were
        found holding the blocks, made earlier (default: now)."""
        planes = job.planes or [job.layer]
        if plan is None:
            plan = self._plan_slab_load(planes, job.block_ids, job.slots, job.tags)
        issued = self._launch_slab_load(planes, plan, stream, job.ready)
        if issued.done is None and not issued.ids:
            self._finish(job, ok=False, error=f"{len(issued.missing)} block(s) not in the slab",
                         failed_blocks=issued.missing)
            return None
        def retire() -> None:
            bad = issued.failed()
            if self.is_cuda:
                failed = set(bad)
                self._offer_load_wait(planes, issued.done,
                                      [b for b in issued.ids if b not in failed])
            self._finish(job, ok=not bad, error=f"{len(bad)} block(s) failed their slot or sum "
                         "check" if bad else "", failed_blocks=bad)

        # ``polled``: issued by the engine thread and retired by its polls, which the load
        # metrics then time (a worker's own retirement is not the engine's polling)
        return _InFlight(issued.done, retire, job, issued.keep,
                         issued_at=issued.issued if polled else 0.0)

    def load_planes_now(self, planes: Sequence[int], block_ids: Sequence[int],
                        slots: Sequence[int], tags: Sequence[int]) -> SlabLoad:
        """Slab only: a synchronous load, issued here and now on the calling (engine) thread's
        current stream, so the forward queued after it on that stream reads the blocks with
        no event, no worker hand-over and no extra engine step. The blocks are checked on the
        device like any load; :meth:`SlabLoad.failed` (call it after the forward was queued)
        waits for the load alone and names the blocks that failed, which vLLM recomputes."""
        if self.slab is None:
            raise ValueError("load_planes_now needs the host slab")
        self._check_slots(block_ids, slots)
        stream = torch.cuda.current_stream(self.device) if self.is_cuda else None
        try:
            return self._issue_slab_load(list(planes), list(block_ids), list(slots),
                                         list(tags), stream, None)
        except Exception as exc:  # never into the engine's step: the blocks are recomputed
            if isinstance(exc, streamcheck.StreamHazardError):
                with self.metrics._lock:
                    self.metrics.hazards_stopped += 1
                why = f"stopped by streamcheck: {exc.rule_ids}"
            else:
                why = f"{type(exc).__name__}: {exc}"
            return SlabLoad(self, list(block_ids), [], None, None, (), time.perf_counter(), 0,
                            error=why)

    def settle_now(self, load: SlabLoad) -> list[int]:
        """The failed blocks of a :meth:`load_planes_now` load (waiting for it), counted as a
        failed load in the metrics when there are any."""
        bad = load.failed()
        if bad:
            with self.metrics._lock:
                self.metrics.failed_loads += 1
            self.last_error = load.error or f"{len(bad)} block(s) failed their slot or sum check"
        return bad

    def _issue_slab_load(self, planes: list[int], block_ids: list[int], slots: list[int],
                         tags: list[int], stream: Any, ready: Any) -> SlabLoad:
        """Copy each run of slots to the device on ``stream`` (after ``ready``, if given),
        check every block's sum there, scatter into the KV cache. A block whose slot (in any
        plane) holds another block is not copied; one whose sum is wrong is reported failed
        (vLLM recomputes it, overwriting whatever landed in it)."""
        return self._launch_slab_load(planes, self._plan_slab_load(planes, block_ids, slots,
                                                                    tags), stream, ready)

    def _plan_slab_load(self, planes: list[int], block_ids: list[int], slots: list[int],
                        tags: list[int]) -> SlabLoadPlan:
        """Which blocks' slots hold them in every plane, and the sums the copies must match,
        read from the slab in one step against the worker's saves."""
        slab = self.slab
        assert slab is not None
        start = time.perf_counter()
        held, sums = slab.expect(planes, slots, tags)
        missing = [b for b, ok in zip(block_ids, held.tolist(), strict=True) if not ok]
        good = np.flatnonzero(held)
        return SlabLoadPlan(missing, [block_ids[i] for i in good.tolist()],
                            [slots[i] for i in good.tolist()], sums[:, good], start)

    def _launch_slab_load(self, planes: list[int], plan: SlabLoadPlan, stream: Any,
                          ready: Any) -> SlabLoad:
        """The copies, checks and scatters of ``plan`` (see :meth:`_issue_slab_load`)."""
        slab = self.slab
        assert slab is not None
        missing, ids, slots, start = plan.missing, plan.ids, plan.slots, plan.start
        if not ids:
            return SlabLoad(self, missing, [], None, None, (), start, 0)
        spans = runs(slots)
        expected = torch.from_numpy(np.ascontiguousarray(plan.sums))
        index = self._index(ids, stream)
        done = None
        keep: list[Any] = [index]
        queued = began = None
        if self.is_cuda:
            host_ok = torch.empty(len(ids), dtype=torch.bool, pin_memory=True)
            with torch.cuda.stream(stream):
                expected_dev = self._upload(expected, stream)
                sums = torch.empty((len(planes), len(ids)), dtype=torch.int64,
                                   device=self.device)
                queued = torch.cuda.Event(enable_timing=True)
                queued.record()
                if ready is not None:
                    stream.wait_event(ready)  # the forward's reads come first
                began = torch.cuda.Event(enable_timing=True)
                began.record()
                with streamcheck.launch("connector.load.scatter", stream=stream,
                                        device=self.device.index,
                                        writes=self._blocksets(planes, ids)):
                    buffers: dict[tuple[torch.dtype, int, int], torch.Tensor] = {}
                    for group in self._check_groups(planes):  # a buffer and a sum per run
                        first_i, _, blocks = group[0]
                        arrived = self._run_buffer(buffers, len(group), len(ids), blocks)
                        for j, (_, plane, _) in enumerate(group):
                            rows = self._slab_plane(plane, blocks.dtype)
                            for pos, first, count in spans:
                                arrived[j, pos:pos + count].copy_(rows[first:first + count],
                                                                  non_blocking=True)
                        block_sums(arrived.view(-1, blocks.shape[1]),
                                   out=sums[first_i:first_i + len(group)].view(-1))
                        for j, (_, _, plane_blocks) in enumerate(group):
                            plane_blocks.index_copy_(0, index, arrived[j])
                    ok = (sums == expected_dev).all(dim=0)  # every plane of a block checks out
                    host_ok.copy_(ok, non_blocking=True)
                keep += [ok, expected_dev, sums]
                done = torch.cuda.Event(enable_timing=True)
                done.record()
        else:
            host_ok = torch.ones(len(ids), dtype=torch.bool)
            for i, plane in enumerate(planes):
                blocks = self._blocks(plane)
                arrived = torch.empty((len(ids), blocks.shape[1]), dtype=blocks.dtype)
                for pos, first, count in spans:
                    arrived[pos:pos + count].copy_(slab.rows(plane, first, count, blocks.dtype))
                host_ok &= block_sums(arrived) == expected[i]
                blocks.index_copy_(0, index, arrived)
        return SlabLoad(self, missing, ids, host_ok, done, tuple(keep), start,
                        len(ids) * len(planes) * self.block_nbytes,
                        issued=time.perf_counter(), queued=queued, began=began)

    def _finish(self, job: _Job, ok: bool, error: str = "",
                failed_blocks: Sequence[int] = ()) -> None:
        self._mark_read(job)  # a failed or cancelled save no longer reads the KV cache
        with self._lock:
            table = self._saves if job.kind == "save" else self._loads
            state = table.setdefault(job.group, _GroupState())
            state.pending -= 1
            if not ok:
                state.failed = True
                state.failed_blocks.update(failed_blocks or job.block_ids)
                self.last_error = error
                if job.kind == "save":
                    self.metrics.failed_saves += 1
                else:
                    self.metrics.failed_loads += 1
            self._settle(job.group, state, table)

    def _settle(self, name: str, state: _GroupState, table: dict[str, _GroupState]) -> None:
        """Report a sealed group whose transfers all ended (the caller holds the lock)."""
        if not state.sealed or state.pending > 0:
            return
        del table[name]
        if table is self._saves:
            (self._done.saves_failed if state.failed else self._done.saves_ok).add(name)
        else:
            self._done.loads_done.add(name)
            self._done.failed_load_blocks.update(state.failed_blocks)
