"""The rules: small pure functions from (context, launch) to an optional finding.

Each rule has a stable id that is never reused; its title and its one fix come from the hazard
catalogue (:mod:`streamcheck.core.hazards`), which scan and doctor read too. Rules do not keep
state: what they need to know about the past (who made a stream current, who is the engine
thread) they ask the :class:`RuleContext`. The table :data:`RULES` is the only registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from streamcheck.core import roles
from streamcheck.core.clocks import HappensBefore
from streamcheck.core.hazards import CATALOGUE
from streamcheck.core.ids import ThreadRef, frames_of, stack_of_thread
from streamcheck.core.provenance import StreamBook
from streamcheck.core.records import Finding, Handoff, LaunchRecord, StreamEvent


@dataclass(frozen=True)
class RuleContext:
    """What rules may consult besides the launch itself."""

    book: StreamBook
    clocks: HappensBefore = field(default_factory=HappensBefore)
    #: The rules reported (None: all). A rule that leaves a case to a more precise one asks
    #: whether that one is reported at all.
    select: frozenset[str] | None = None
    role_of: Callable[[int], str] = roles.main_thread_role
    engine_threads: Callable[[], list[int]] = roles.main_thread_only


RuleCheck = Callable[[RuleContext, LaunchRecord], "Finding | None"]


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    fix: str
    check: RuleCheck


def _finding(rule_id: str, launch: LaunchRecord, message: str,
             other_event: StreamEvent | None = None,
             other_thread: ThreadRef | None = None) -> Finding:
    """A finding of the rule ``rule_id``: its title and fix come from the table, and the other
    thread (if any) is looked at now, so the report shows where it is at the launch."""
    rule = RULES[rule_id]
    return Finding(
        rule_id=rule.id, title=rule.title, message=message, fix=rule.fix, launch=launch,
        other_thread=other_thread, other_event=other_event,
        other_stack_now=stack_of_thread(other_thread.ident) if other_thread is not None else (),
    )


def _via(launch: LaunchRecord) -> str:
    return f" through {launch.accessor}" if launch.accessor else ""


def _mismatch(launch: LaunchRecord) -> bool:
    return launch.current is not None and launch.stream.key != launch.current.key


def check_foreign_stream(ctx: RuleContext, launch: LaunchRecord) -> Finding | None:
    """The launch resolved "the current stream" and got one that another thread made current."""
    if not (launch.implicit and _mismatch(launch)):
        return None
    me = launch.thread.ident
    other = ctx.book.made_current_elsewhere(launch.stream, me)
    if other is None or ctx.book.is_current_in(launch.stream, me):
        return None
    assert launch.current is not None
    message = (
        f"{launch.op} in {launch.thread.describe()} resolved its stream{_via(launch)} and got "
        f"{launch.stream.describe()}, but this thread's real current stream is "
        f"{launch.current.describe()}. {other.thread.describe()} made that stream current "
        f"(via {other.via or 'set_stream'}): the accessor's cache is shared between threads, so "
        "the launch is not ordered with this thread's compute."
    )
    return _finding("foreign-stream", launch, message, other, other.thread)


def check_stale_stream_cache(ctx: RuleContext, launch: LaunchRecord) -> Finding | None:
    """The launch resolved "the current stream" and got one this thread no longer has current."""
    if not (launch.implicit and _mismatch(launch)):
        return None
    me = launch.thread.ident
    if ctx.book.made_current_elsewhere(launch.stream, me) is not None and not (
        ctx.book.is_current_in(launch.stream, me)
    ):
        return None  # that is foreign-stream's finding, not a stale cache
    assert launch.current is not None
    message = (
        f"{launch.op} in {launch.thread.describe()} resolved its stream{_via(launch)} and got "
        f"{launch.stream.describe()}, but the thread's real current stream is "
        f"{launch.current.describe()}. The cache missed a stream switch that did not pass "
        "through the patched setter (torch.Stream used as a context manager, "
        "torch.accelerator.set_stream, a C++ extension), so the launch runs unordered with the "
        "compute that feeds it."
    )
    return _finding("stale-stream-cache", launch, message)


#: The op of the launch record an event record makes when its stream is on another device
#: (only the ``event-device-mismatch`` rule is run on it).
EVENT_RECORD = "<torch.cuda.Event.record>"


#: The op of the launch record a stream creation makes when a helper thread creates a stream
#: on another device than its process's engine device, with no device named (only the
#: ``stream-on-unbound-device`` rule is run on it).
STREAM_CREATION = "<Stream() on the thread's current device>"

_NOT_LAUNCHES = (EVENT_RECORD, STREAM_CREATION)


def check_device_mismatch(ctx: RuleContext, launch: LaunchRecord) -> Finding | None:
    """The stream lives on another device than the communicator or tensors it launches for."""
    target = launch.target_device
    if target is None or launch.stream.device == target or launch.op in _NOT_LAUNCHES:
        return None
    origin = ctx.book.origin(launch.stream)
    made_by = ""
    if origin is not None:
        made_by = (
            f" The stream was created by {origin.thread.describe()} while that thread's current "
            f"device was cuda:{origin.stream.device}."
        )
    message = (
        f"{launch.op} targets cuda:{target} but was about to launch on "
        f"{launch.stream.describe()}.{made_by} NCCL would launch its kernel on a stream of another "
        "device: CUDA error 400 'invalid resource handle', and the peer ranks hang in the "
        "collective."
    )
    other = None
    if origin is not None and origin.thread.ident != launch.thread.ident:
        other = origin.thread
    return _finding("device-mismatch", launch, message, origin, other)


def _device_set_by(ctx: RuleContext, launch: LaunchRecord) -> tuple[int, str] | None:
    """(device, " at file:line") of the launching thread's last ``set_device``, if any."""
    changed = ctx.book.last_device_set(launch.thread.ident)
    if changed is None:
        return None
    where = frames_of(changed[1])
    return changed[0], f" at {where[0][0]}:{where[0][1]}" if where else ""


def check_event_device_mismatch(ctx: RuleContext, launch: LaunchRecord) -> Finding | None:
    """An event bound to one device is recorded on a stream of another, usually because
    something changed the thread's current device since."""
    target = launch.target_device
    if launch.op != EVENT_RECORD or target is None or launch.stream.device == target:
        return None
    changed = _device_set_by(ctx, launch)
    why = ""
    if changed is not None and changed[0] == launch.stream.device:
        why = (f" This thread's last set_device made cuda:{changed[0]} its current "
               f"device{changed[1]}.")
    message = (
        f"{launch.thread.describe()} records an event bound to cuda:{target} on "
        f"{launch.stream.describe()}.{why} PyTorch refuses the record (RuntimeError 'Event "
        "device ... does not match recording stream's device ...'): the engine's step fails."
    )
    return _finding("event-device-mismatch", launch, message)


def check_stream_on_unbound_device(ctx: RuleContext, launch: LaunchRecord) -> Finding | None:
    """A helper thread created a stream on its current device, which is not its engine's:
    a fresh thread's current device is 0 whatever the rank, unless it binds its own."""
    target = launch.target_device
    if launch.op != STREAM_CREATION or target is None or launch.stream.device == target:
        return None
    if ctx.role_of(launch.thread.ident) == roles.ENGINE:
        return None
    changed = _device_set_by(ctx, launch)
    if changed is None:
        why = (f"{launch.thread.describe()} never called set_device, and a new thread's current "
               f"device is cuda:0 whatever its rank")
    else:
        why = f"{launch.thread.describe()} made cuda:{changed[0]} its current device{changed[1]}"
    message = (
        f"{why}, so the stream it just created, {launch.stream.describe()}, lives on another "
        f"device than its engine's (cuda:{target}). Work queued on it runs on the wrong GPU: "
        "copies of this rank's buffers fail or time out, a collective launched on it fails "
        "with CUDA error 400, and an event recorded on it cannot be waited on by the engine's "
        "stream."
    )
    return _finding("stream-on-unbound-device", launch, message)


def check_default_stream_in_worker(ctx: RuleContext, launch: LaunchRecord) -> Finding | None:
    """A helper thread launches on the legacy default stream while the engine uses another."""
    if not launch.stream.is_default or ctx.role_of(launch.thread.ident) == roles.ENGINE:
        return None
    for engine in ctx.engine_threads():
        if engine == launch.thread.ident:
            return None
        event = ctx.book.current_of(engine, launch.stream.device)
        if event is None or event.stream.is_default:
            continue
        message = (
            f"{launch.op} in {launch.thread.describe()} runs on the "
            f"{launch.stream.describe()} while {event.thread.describe()} computes on "
            f"{event.stream.describe()}. New threads start on the legacy default stream, and "
            "PyTorch's streams do not synchronise with it: nothing orders this work with the "
            "engine's."
        )
        return _finding("default-stream-in-worker", launch, message, event, event.thread)
    return None


def _fresh_switch(ctx: RuleContext, launch: LaunchRecord, handoff: Handoff
                  ) -> StreamEvent | None:
    """The creation of the launch stream, when this thread created it after it produced
    ``handoff`` (and so switched to a stream that never saw that work), else None."""
    if handoff.thread.ident != launch.thread.ident or handoff.stream.key == launch.stream.key:
        return None
    origin = ctx.book.origin(launch.stream)
    if origin is None or origin.thread.ident != launch.thread.ident or origin.time < handoff.time:
        return None
    return origin


def check_unsynced_handoff(ctx: RuleContext, launch: LaunchRecord) -> Finding | None:
    """The launch reads a handed-off tensor on a stream that never waited for its producer."""
    for handoff in launch.reads:
        if ctx.clocks.ordered(launch.stream.key, handoff.mark):
            continue
        switch_reported = ctx.select is None or "unordered-stream-switch" in ctx.select
        if switch_reported and _fresh_switch(ctx, launch, handoff) is not None:
            continue  # unordered-stream-switch says it more precisely
        message = (
            f"{launch.op} in {launch.thread.describe()} reads a tensor on "
            f"{launch.stream.describe()} that {handoff.thread.describe()} handed off on "
            f"{handoff.stream.describe()}, but no event recorded on that stream after the "
            "handoff was waited on by the reading stream: the read can run before the "
            "producing kernels finish (saved KV differs from what the forward wrote)."
        )
        event = _access_event(handoff, "handoff")
        return _finding("unsynced-handoff", launch, message, event, handoff.thread)
    return None


def check_unordered_stream_switch(ctx: RuleContext, launch: LaunchRecord) -> Finding | None:
    """The thread produced a tensor, then switched to a new stream that never waited for the
    old one, and reads the tensor there."""
    for handoff in launch.reads:
        if ctx.clocks.ordered(launch.stream.key, handoff.mark):
            continue
        origin = _fresh_switch(ctx, launch, handoff)
        if origin is None:
            continue
        message = (
            f"{launch.op} in {launch.thread.describe()} reads on {launch.stream.describe()} a "
            f"tensor this thread produced on {handoff.stream.describe()} before it created "
            f"that stream (via {origin.via or 'Stream()'}) and switched to it. A new stream "
            "does not wait for the one it replaces (PyTorch's pool streams are non-blocking), "
            "so the read can run before the write."
        )
        return _finding("unordered-stream-switch", launch, message, origin, None)
    return None


def _unordered_prior(ctx: RuleContext, launch: LaunchRecord, access: str) -> Handoff | None:
    """The first earlier ``access`` ("read"/"write") of a buffer this launch writes that the
    launch stream is not ordered after."""
    for target in launch.writes:
        for earlier in target.reads if access == "read" else target.writes:
            if not ctx.clocks.ordered(launch.stream.key, earlier.mark):
                return earlier
    return None


def _access_event(access: Handoff, kind: str = "") -> StreamEvent:
    """A declared access as the other side of a finding (``kind``: how the report names it)."""
    return StreamEvent(kind or access.access, access.stream, access.thread, access.time,
                       frames_of(access.stack), via="streamcheck.handoff")


def check_write_after_read(ctx: RuleContext, launch: LaunchRecord) -> Finding | None:
    """The launch overwrites a buffer that another stream may still be reading."""
    read = _unordered_prior(ctx, launch, "read")
    if read is None:
        return None
    message = (
        f"{launch.op} in {launch.thread.describe()} writes a buffer on "
        f"{launch.stream.describe()} that {read.thread.describe()} declared read on "
        f"{read.stream.describe()}, and no event recorded on that stream after the read was "
        "waited on by the writing stream: the write can land while the read is still running "
        "(a reused KV block is overwritten under the attention that reads it)."
    )
    return _finding("write-after-read", launch, message, _access_event(read), read.thread)


def check_write_after_write(ctx: RuleContext, launch: LaunchRecord) -> Finding | None:
    """The launch writes a buffer whose previous write, on another stream, may not be done."""
    write = _unordered_prior(ctx, launch, "write")
    if write is None:
        return None
    message = (
        f"{launch.op} in {launch.thread.describe()} writes a buffer on "
        f"{launch.stream.describe()} that {write.thread.describe()} also wrote on "
        f"{write.stream.describe()}, and no event recorded after that write was waited on by "
        "the writing stream: the two writes can land in either order (a block zeroed on the "
        "compute stream after the load filled it)."
    )
    return _finding("write-after-write", launch, message, _access_event(write), write.thread)


def _rule(rule_id: str, check: RuleCheck) -> Rule:
    """A rule whose title and fix are its hazard catalogue entry's."""
    entry = CATALOGUE[rule_id]
    return Rule(entry.slug, entry.title, entry.fix, check)


#: The rules in evaluation order; each id is a :data:`~streamcheck.core.hazards.CATALOGUE` slug.
RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        _rule("foreign-stream", check_foreign_stream),
        _rule("stale-stream-cache", check_stale_stream_cache),
        _rule("device-mismatch", check_device_mismatch),
        _rule("event-device-mismatch", check_event_device_mismatch),
        _rule("stream-on-unbound-device", check_stream_on_unbound_device),
        _rule("default-stream-in-worker", check_default_stream_in_worker),
        _rule("unsynced-handoff", check_unsynced_handoff),
        _rule("unordered-stream-switch", check_unordered_stream_switch),
        _rule("write-after-read", check_write_after_read),
        _rule("write-after-write", check_write_after_write),
    )
}


def evaluate(ctx: RuleContext, launch: LaunchRecord, select: frozenset[str] | None = None
             ) -> Iterator[Finding]:
    """Run every (selected) rule over one launch."""
    for rule in RULES.values():
        if select is not None and rule.id not in select:
            continue
        finding = rule.check(ctx, launch)
        if finding is not None:
            yield finding

