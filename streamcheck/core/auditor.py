"""The auditor: one gate every audited launch passes through, and the findings it keeps.

The gate is split in two. :meth:`Auditor.admit` is the hot path: a few integer comparisons on
facts the wrapper already read (the stream used, the thread's real current stream, the target
device). Only a launch that fails them pays for a record, stacks and the rules, in
:meth:`Auditor.review`. The fast test is exactly the conjunction of the rules' preconditions:
``foreign-stream`` and ``stale-stream-cache`` need an implicit launch whose stream is not the
thread's current one, ``device-mismatch`` a stream off the target device, and
``default-stream-in-worker`` a default-stream launch from a thread that is not an engine thread.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from streamcheck.core import ids, locks
from streamcheck.core.clocks import Clock, HappensBefore, Mark
from streamcheck.core.coverage import Coverage
from streamcheck.core.errors import StreamHazardError
from streamcheck.core.explain import explain_finding
from streamcheck.core.ids import (
    DEFAULT_STREAM_ID,
    StreamRef,
    ThreadRef,
    capture_stack,
)
from streamcheck.core.modes import Mode
from streamcheck.core.provenance import StreamBook
from streamcheck.core.records import (
    Blocks,
    Finding,
    FindingEntry,
    Handoff,
    LaunchRecord,
    StreamEvent,
    WriteTarget,
    overlaps,
)
from streamcheck.core.report import AuditReport, build_report
from streamcheck.core.roles import ThreadRoles
from streamcheck.core.rules import EVENT_RECORD, STREAM_CREATION, RuleContext, evaluate

FindingListener = Callable[[Finding], None]

#: A declared access: the buffer's key and the blocks touched (None: all of it).
Access = tuple[tuple[int, int], Blocks]

#: Accesses kept per buffer and kind. A write drops the earlier accesses it covers and a read
#: the same stream's earlier reads it covers, so a buffer accessed whole keeps one write and
#: one read per stream; any access drops those the host has since waited for (they are
#: ordered before everything queued after the wait). Block accesses spread over many blocks,
#: none waited for, keep up to this many, and the oldest beyond it are forgotten (a hazard
#: against one of those goes unseen).
MAX_ACCESSES = 64
MAX_THREADS = 4096  # thread records kept for reuse (Auditor.thread_ref)

#: Makes an auditor's ``declare`` in C: ``make_declare(auditor, Auditor.declare, Mark, Handoff,
#: MAX_ACCESSES, StreamRef)``, the same handoffs, clock tick and kept accesses with no Python
#: frame but the thread record's (``Declarer`` in streamcheck/_declare.c; a connector declares
#: several times a step, about 33,000 instructions each in Python). Put here by the hooks layer
#: with the compiled core (``wrappers.speedups``), read when an auditor is made; None: Python's.
make_declare: Callable[..., Callable[..., list[Handoff]]] | None = None


class StreamHazardWarning(RuntimeWarning):
    """Emitted once per distinct finding in ``warn`` mode."""


def _not_covered(accesses: list[Handoff], new: Blocks, done: Clock) -> list[Handoff]:
    """The ``accesses`` an access to ``new`` does not cover and the host has not waited for
    (``done``: :meth:`HappensBefore.done_clock`): an access covers an earlier one when it
    touches every block that one did (``None``: the whole buffer). Inlined here and in
    :meth:`Auditor._keep_access`: a buffer keeps up to :data:`MAX_ACCESSES` accesses, scanned
    at every declared access. Dropping the waited-for ones keeps a paged KV cache's lists
    short: each load and forward touches other blocks, none covering the last, and every
    engine step waits for its forward (measured: ``scripts/bench_block_accesses.py``)."""
    if new is None:
        return []
    return [a for a in accesses if done.get(a.mark.stream, 0) < a.mark.tick
            and (a.blocks is None or not a.blocks <= new)]


def _pending(accesses: Sequence[Handoff], blocks: Blocks, done: Clock) -> tuple[Handoff, ...]:
    """The ``accesses`` that touch ``blocks`` and that the host has not waited for (``done``):
    what a new access of those blocks may still race with. A list the host's waits emptied
    (the common case in an engine) costs no generator."""
    if not accesses:
        return ()
    return tuple(a for a in accesses
                 if done.get(a.mark.stream, 0) < a.mark.tick and overlaps(a.blocks, blocks))


class Auditor:
    """Holds the mode, the stream book and the findings of one process."""

    def __init__(self, mode: Mode, select: frozenset[str] | None = None, runtime: str = "",
                 roles: ThreadRoles | None = None) -> None:
        if not mode.active:
            raise ValueError("an Auditor is only built for an active mode; 'off' installs nothing")
        self.mode = mode
        self.runtime = runtime
        # The threads' roles (the process's table when the installer builds the auditor, so
        # roles declared before the audit started count): the one engine-thread test, and the
        # ident the hooks' fast paths spare, kept here as a plain attribute (main_engine).
        self.roles = roles if roles is not None else ThreadRoles()
        self.main_engine: int | None = None
        self.roles.follow(self)
        self.is_engine_thread = self.roles.is_engine
        self.role_of = self.roles.role_of
        self.book = StreamBook(self.role_of)
        self.clocks = HappensBefore()
        # The facts the hooks report, one named call each. Bound methods of the book and the
        # clocks, so the hot ones (a stream switch: a deque.append) cost no extra frame.
        self.made_current = self.book.record_switch
        self.device_set = self.book.device_set
        self.event_recorded = self.clocks.record
        self.event_waited = self.clocks.wait
        self.stream_waited = self.clocks.take_in
        self.stream_clock = self.clocks.clock_of
        self.host_waited_for = self.clocks.host_waited_for
        self.device_synchronized = self.clocks.device_synchronized
        self.event_snapshot = self.clocks.snapshot_of
        # False until the first declared access: events order nothing before it, and the event
        # and host-wait hooks pass on this one attribute read (kept by the clocks' activation).
        self.ordering = False
        self._first_access: Callable[[], None] | None = None
        self.clocks.on_active = self._ordering_on
        self.clocks.on_activate = self._ordering_begins
        self.context = RuleContext(self.book, self.clocks, select=select, role_of=self.role_of,
                                   engine_threads=self.roles.engine_threads)
        self.select = select
        self.started = time.time()
        self._entries: dict[tuple[object, ...], FindingEntry] = {}
        self._lock = locks.make_lock()
        self.coverage = Coverage()
        self._listeners: list[FindingListener] = []
        # per buffer: the latest writes (of its blocks) and the reads declared since them
        self._writes: dict[tuple[int, int], list[Handoff]] = {}
        self._reads: dict[tuple[int, int], list[Handoff]] = {}
        self._threads: dict[int, ThreadRef] = {}  # see thread_ref
        if make_declare is not None:  # last: it reads the attributes above once
            self.declare = make_declare(  # type: ignore[method-assign]
                self, Auditor.declare, Mark, Handoff, MAX_ACCESSES, StreamRef)

    # ---- hot path -------------------------------------------------------------------------

    def thread_ref(self, ident: int) -> ThreadRef:
        """The calling thread (``ident``) as a record names it, with its name and role as
        they are now. A connector declares accesses several times a step: one record is made
        per thread and made again only when its name or role changed (a record is a value, so
        a reused ident with the same name and role may share it)."""
        name, role = threading.current_thread().name, self.role_of(ident)
        ref = self._threads.get(ident)
        if ref is None or ref.name != name or ref.role != role:
            if len(self._threads) >= MAX_THREADS:
                self._threads.clear()  # many threads came and went: start again
            ref = self._threads[ident] = ThreadRef(ident, name, role)
        return ref

    def admit(self, op: str, stream_device: int, stream_id: int, stream_obj: object,
              current_device: int | None, current_id: int | None, target_device: int | None,
              implicit: bool, accessor: str = "", counted: bool = False,
              reads: tuple[Handoff, ...] = (), writes: tuple[WriteTarget, ...] = ()) -> None:
        """Let a launch through, or hand it to :meth:`review` (which may raise).

        ``counted`` says the caller already advanced this launch site's counter.
        """
        if not counted:
            next(self.coverage.counter(op))
        key = (stream_device, stream_id)
        if (
            (target_device is None or stream_device == target_device)
            and (not implicit or current_id is None
                 or (stream_id == current_id and stream_device == current_device))
            and (stream_id != DEFAULT_STREAM_ID or self.is_engine_thread(threading.get_ident()))
            and (not reads or self.clocks.all_ordered(key, reads))
            and (not writes
                 or all(self.clocks.all_ordered(key, t.prior()) for t in writes))
        ):
            return
        current = None
        if current_id is not None and current_device is not None:
            current = StreamRef(current_device, current_id)
        handle = getattr(stream_obj, "cuda_stream", 0)
        self.review(op, StreamRef(stream_device, stream_id, int(handle or 0)), current,
                    target_device, implicit, accessor, reads=reads, writes=writes)

    def handoff(self, tensor: tuple[int, int], stream: StreamRef, access: str = "write",
                skip: int = 2, blocks: Blocks = None) -> Handoff:
        """Declare an access to ``tensor`` (its ``blocks``; None: all of it) on ``stream`` now.

        A ``"write"``: the blocks are complete on ``stream``; later readers and writers must be
        ordered after this point (and the accesses before it that it covers no longer matter:
        they were ordered before this write or it is itself a finding). A ``"read"``: a later
        writer must be ordered after this point.
        """
        if access not in ("write", "read"):
            raise ValueError(f"access must be 'write' or 'read', not {access!r}")
        reads, writes = ((), ((tensor, blocks),)) if access == "write" else (
            ((tensor, blocks),), ())
        return self.declare(stream, reads, writes, skip=skip + 1)[0]

    def declare(self, stream: StreamRef, reads: Sequence[Access], writes: Sequence[Access],
                skip: int = 2) -> list[Handoff]:
        """Declare reads and writes of several buffers on ``stream`` at one point: one clock
        tick, one site, one lock for all of them (a launch declares what it touches this way).
        Returns the handoffs, reads first."""
        ident = threading.get_ident()
        mark = self.clocks.mark(stream.key)
        thread = self.thread_ref(ident)
        when, site = time.time(), ids.site_capture(skip=skip)  # a site, not a formatted stack
        # positional: a connector declares several times a step, and keywords cost a
        # dataclass's __init__ more than its eight fields do (0.6 against 0.24 us on the CPU
        # machine). Order: tensor, mark, stream, thread, time, stack, access, blocks.
        made = [Handoff(key, mark, stream, thread, when, site, "read", blocks)
                for key, blocks in reads]
        if writes:
            made += [Handoff(key, mark, stream, thread, when, site, "write", blocks)
                     for key, blocks in writes]
        with self._lock:
            done = self.clocks.done_clock()
            for handoff in made:
                if handoff.access == "write":
                    self._keep_access(self._writes, handoff, False, done)
                    reads_now = self._reads.get(handoff.tensor)
                    if reads_now:
                        reads_now[:] = _not_covered(reads_now, handoff.blocks, done)
                else:
                    self._keep_access(self._reads, handoff, True, done)
        return made

    @staticmethod
    def _keep_access(table: dict[tuple[int, int], list[Handoff]], access: Handoff,
                     same_stream: bool, done: Clock) -> None:
        """Add ``access`` to its buffer's list, dropping the earlier ones it covers (reads: only
        the same stream's, which run before it anyway) and those the host waited for
        (``done``)."""
        kept = table.setdefault(access.tensor, [])
        if same_stream:  # the stream's key read as fields, not through the property
            device, sid, new = access.stream.device, access.stream.stream_id, access.blocks
            if new is None:
                kept[:] = [a for a in kept if done.get(a.mark.stream, 0) < a.mark.tick
                           and (a.stream.stream_id != sid or a.stream.device != device)]
            else:
                kept[:] = [a for a in kept if done.get(a.mark.stream, 0) < a.mark.tick
                           and (a.stream.stream_id != sid or a.stream.device != device
                                or a.blocks is None or not a.blocks <= new)]
        else:
            kept[:] = _not_covered(kept, access.blocks, done)
        kept.append(access)
        if len(kept) > MAX_ACCESSES:
            del kept[:len(kept) - MAX_ACCESSES]

    def fenced_by_allocator(self, tensor: tuple[int, int], stream: tuple[int, int]) -> None:
        """``tensor.record_stream(stream)``: the caching allocator will not hand this memory
        out again before the work queued on ``stream`` so far is done (it waits on an event of
        its own, which the clocks cannot see). A later owner of the address is ordered after
        that stream's reads, so they are dropped.

        What this cannot tell: whether a later write to the address is a new owner's or the
        same live tensor's. ``record_stream`` is meant for a tensor about to be freed; a read
        on ``stream`` declared before it, of a tensor that lives on and is written again on
        another stream, is no longer checked (a missed ``write-after-read``). The latest write
        is kept: readers must still be ordered after it."""
        with self._lock:
            reads = self._reads.get(tensor)
            if reads:
                reads[:] = [r for r in reads if r.stream.key != stream]

    def on_first_access(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, at the first declared access (at once if that was already):
        until then events order nothing, so whoever feeds event records and waits may start
        only then."""
        self._first_access = callback
        if self.ordering:
            callback()

    def _ordering_on(self) -> None:
        """The clocks' first mark, inside their lock: the hooks' flag is up before any other
        thread can see the clocks live, so no event record in between goes unsnapshotted."""
        self.ordering = True

    def _ordering_begins(self) -> None:
        """The clocks took their first mark: from now on event records and waits matter."""
        if self._first_access is not None:
            self._first_access()

    def stream_created(self, event: StreamEvent, home_device: int | None = None) -> None:
        """A stream was created. ``home_device``: the device of the creating process's engine,
        when the stream took the thread's current device (no device named); a helper thread
        whose stream lands elsewhere is explained (``stream-on-unbound-device``), and
        ``assert`` stops it there, before anything is queued on that stream.

        The compiled creation hook writes a plain creation on the home device into the book
        itself, as :meth:`StreamBook.record` would, without calling this (``CreationHook`` in
        streamcheck/_speedups.c): what is added here for such a creation must be added
        there."""
        self.book.record(event)
        if (home_device is None or event.stream.device == home_device
                or self.is_engine_thread(event.thread.ident)):
            return
        self.review(STREAM_CREATION, event.stream, None, home_device, implicit=False,
                    rules=frozenset({"stream-on-unbound-device"}))

    def event_on_wrong_device(self, event_device: int, stream: StreamRef) -> None:
        """An event bound to ``event_device`` is about to be recorded on ``stream`` of another
        device: the rules explain it (``event-device-mismatch``), ``assert`` stops it."""
        self.review(EVENT_RECORD, stream, None, event_device, implicit=False,
                    rules=frozenset({"event-device-mismatch"}))

    def writes_of(self, tensor: tuple[int, int], blocks: Blocks = None) -> tuple[Handoff, ...]:
        """The latest writes declared for ``tensor`` that touch ``blocks`` (None: any): what a
        read of them must be ordered after."""
        with self._lock:
            return _pending(self._writes.get(tensor, ()), blocks, self.clocks.done_clock())

    def write_target(self, tensor: tuple[int, int], blocks: Blocks = None) -> WriteTarget:
        """What a write to ``tensor`` (its ``blocks``) must be ordered after: the latest writes
        of those blocks and the reads of them declared since."""
        return self.write_targets(((tensor, blocks),))[0]

    def write_targets(self, accesses: Sequence[Access]) -> tuple[WriteTarget, ...]:
        """:meth:`write_target` of each ``(tensor, blocks)``, under one lock and one read of
        the done clock: a connector's load writes every plane of a layer range at once (32
        in the engine's runs), and a lock and a done clock a plane were most of its check."""
        with self._lock:
            done = self.clocks.done_clock()
            writes, reads = self._writes, self._reads
            return tuple(WriteTarget(tensor, _pending(writes.get(tensor, ()), blocks, done),
                                     _pending(reads.get(tensor, ()), blocks, done), blocks)
                         for tensor, blocks in accesses)

    # ---- slow path ------------------------------------------------------------------------

    def review(self, op: str, stream: StreamRef, current: StreamRef | None,
               target_device: int | None, implicit: bool, accessor: str = "",
               reads: tuple[Handoff, ...] = (),
               writes: tuple[WriteTarget, ...] = (),
               rules: frozenset[str] | None = None) -> list[Finding]:
        """Build the launch record, run the rules (``rules``: only these), and act on the
        findings by mode."""
        ident = threading.get_ident()
        launch = LaunchRecord(
            op=op,
            thread=self.thread_ref(ident),
            stream=stream,
            current=current,
            target_device=target_device,
            implicit=implicit,
            accessor=accessor,
            time=time.time(),
            stack=capture_stack(skip=2),
            reads=reads,
            writes=writes,
        )
        select = self.select if rules is None else (
            rules if self.select is None else self.select & rules)
        findings = list(evaluate(self.context, launch, select))
        if findings:
            self._keep(findings)
            if self.mode is Mode.ASSERT:
                raise StreamHazardError(findings)
        return findings

    def _keep(self, findings: list[Finding]) -> None:
        fresh: list[Finding] = []
        with self._lock:
            for finding in findings:
                entry = self._entries.get(finding.dedupe_key)
                if entry is None:
                    self._entries[finding.dedupe_key] = FindingEntry(finding)
                    fresh.append(finding)
                else:
                    entry.count += 1
            listeners = list(self._listeners)
        for finding in findings:
            for listener in listeners:
                listener(finding)
        if self.mode is Mode.WARN:
            for finding in fresh:
                warnings.warn(explain_finding(finding), StreamHazardWarning, stacklevel=4)

    # ---- reading back ---------------------------------------------------------------------

    @property
    def launches(self) -> int:
        """How many launches passed the gate, over every launch site."""
        return self.coverage.launches()

    def entries(self) -> list[FindingEntry]:
        with self._lock:
            return [FindingEntry(e.finding, e.count) for e in self._entries.values()]

    def findings(self) -> list[Finding]:
        return [e.finding for e in self.entries()]

    def report(self, final: bool = True, **extra: Any) -> AuditReport:
        """This process's report: the entries, the coverage, the mode and the runtime."""
        return build_report(self.entries(), self.coverage, mode=self.mode.value,
                            runtime=self.runtime, final=final, **extra)

    def subscribe(self, listener: FindingListener) -> Callable[[], None]:
        """Call ``listener`` with every finding (repeats included); returns an unsubscribe."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
