"""Frozen records: what happened at a launch, to a stream, and what a rule concluded.

Records are built only on the slow path (when a launch already looks suspicious) or at stream
events, never for a clean launch, so their cost does not land on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamcheck.core.clocks import Mark
from streamcheck.core.ids import Stack, StreamRef, ThreadRef


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see ids.StreamRef
class StreamEvent:
    """A stream was created, made current, or left as current, by one thread."""

    kind: str  # "created" | "made-current"
    stream: StreamRef
    thread: ThreadRef
    time: float
    stack: Stack = ()
    via: str = ""  # which hook saw it: "torch.cuda.set_stream", "torch.cuda.Stream", ...


#: Which blocks (rows of the first dimension) of a buffer an access touches; None: all of it.
#: A KV cache is one buffer per layer whose blocks belong to different requests, so loads,
#: saves and the forward touch disjoint parts of it on different streams without a hazard.
Blocks = frozenset[int] | None


def overlaps(a: Blocks, b: Blocks) -> bool:
    return a is None or b is None or not a.isdisjoint(b)


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see ids.StreamRef
class Handoff:
    """A buffer access declared on a stream (see ``streamcheck.handoff``): a ``"write"`` is the
    buffer (or its ``blocks``) complete on that stream now (later readers and writers must be
    ordered after it), a ``"read"`` is a read queued there now (a later writer must be ordered
    after it)."""

    tensor: tuple[int, int]  # (device, data pointer)
    mark: Mark
    stream: StreamRef
    thread: ThreadRef
    time: float
    stack: Stack = ()
    access: str = "write"
    blocks: Blocks = None


@dataclass(frozen=True, slots=True)
class WriteTarget:
    """A buffer (or some of its ``blocks``) a launch is about to write, with the accesses it
    must be ordered after: the latest writes of those blocks and the reads queued since."""

    tensor: tuple[int, int]
    writes: tuple[Handoff, ...] = ()
    reads: tuple[Handoff, ...] = ()
    blocks: Blocks = None

    def prior(self) -> tuple[Handoff, ...]:
        return self.writes + self.reads


@dataclass(frozen=True, slots=True)
class LaunchRecord:
    """One audited launch (a collective or a connector op) as its wrapper saw it.

    ``implicit`` is True when the caller did not pass a stream and the launch resolved one
    through an accessor ("the current stream"): only then is a mismatch with the thread's real
    current stream a bug rather than a deliberate side-stream launch.
    """

    op: str
    thread: ThreadRef
    stream: StreamRef
    current: StreamRef | None
    target_device: int | None
    implicit: bool
    accessor: str = ""
    time: float = 0.0
    stack: Stack = ()
    reads: tuple[Handoff, ...] = ()
    writes: tuple[WriteTarget, ...] = ()


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule's verdict on one launch, with everything a person needs to act on it."""

    rule_id: str
    title: str
    message: str
    fix: str
    launch: LaunchRecord
    other_thread: ThreadRef | None = None
    other_event: StreamEvent | None = None
    other_stack_now: Stack = ()
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def dedupe_key(self) -> tuple[object, ...]:
        """Findings with this key are one finding seen several times (a loop repeats it)."""
        callsite = self.launch.stack[0] if self.launch.stack else ("", 0, "")
        return (
            self.rule_id,
            self.launch.op,
            self.launch.stream.key,
            self.launch.thread.ident,
            callsite,
        )


@dataclass
class FindingEntry:
    """One distinct finding and how many times it was seen: what a report is built from."""

    finding: Finding
    count: int = 1
