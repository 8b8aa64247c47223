"""``streamcheck.launch``: audit any connector or user op, as a context manager or decorator.

    with streamcheck.launch("kv.save", stream=save_stream, device=rank):
        blocks.copy_(kv, non_blocking=True)

``stream`` is the stream the op will use (default: the thread's real current stream);
``resolved_from`` names the cache it came from when the caller did not choose it itself, which
makes a mismatch with the thread's real current stream a finding. ``device`` is the device the
op's tensors live on. ``reads`` are handoffs returned by :func:`handoff` (or tensors: their
latest write): the launch stream must have waited for an event recorded after them.
``writes`` are tensors (KV blocks) the op will write: the launch stream must have waited for an
event recorded after their latest write (``write-after-write``) and after every read declared
since (``write-after-read``). A launch that passes declares its own accesses: its reads and
writes, on its stream, for the launches that come after it. In ``assert`` mode a hazard raises
on entry, before the body runs.

Any tensor in ``reads``, ``writes`` or :func:`handoff` may be narrowed to some of its blocks
(rows of its first dimension) with :func:`blocks`: a paged KV cache is one tensor per layer
whose blocks belong to different requests, which loads, saves and the forward touch on
different streams at once; only accesses to the same blocks must be ordered.

    with streamcheck.launch("kv.load", stream=load_stream,
                            writes=[streamcheck.blocks(kv_cache[layer], block_ids)]):
        ...
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from streamcheck.core.clocks import Mark
from streamcheck.core.ids import DEFAULT_STREAM_ID, StreamRef
from streamcheck.core.records import Blocks, Handoff
from streamcheck.runtime import cuda
from streamcheck.runtime.cuda import current_stream_of
from streamcheck.wrappers import speedups
from streamcheck.wrappers.launches import warn_cannot_audit
from streamcheck.wrappers.state import GATE, current_auditor
from streamcheck.wrappers.streams import stream_ref

F = TypeVar("F", bound=Callable[..., Any])


#: The last streams launched on, by id, each with its StreamRef: a connector launches on the
#: same few streams all along, and a stream object's device, id and handle never change, so
#: its StreamRef is made once (six Python calls a launch otherwise). The stream itself is
#: kept beside it, so an id is never taken for a freed stream's; a few at most.
_REFS: dict[int, tuple[Any, StreamRef]] = {}
_REFS_KEPT = 8


def _ref_of(stream: Any) -> StreamRef:
    """``stream_ref(stream)``, made once per stream object while it is among the last few."""
    kept = _REFS.get(id(stream))
    if kept is not None and kept[0] is stream:
        return kept[1]
    ref = stream_ref(stream)
    if len(_REFS) >= _REFS_KEPT:
        _REFS.clear()
    _REFS[id(stream)] = (stream, ref)
    return ref


def _current_of(stream: Any, device: int) -> tuple[int, int, int]:
    own = getattr(stream, "stream_reader", None)
    if own is not None:  # a simulated stream: its machine's reader
        return own().current_stream(device)
    return current_stream_of(device)


def _current_stream_obj(device: int | None) -> Any:
    import torch

    return torch.cuda.current_stream(device)


@dataclass(frozen=True)
class BlockSet:
    """Some blocks (rows of the first dimension) of a tensor: see :func:`blocks`."""

    tensor: Any
    ids: frozenset[int]


def blocks(tensor: Any, ids: Iterable[int]) -> BlockSet:
    """Name blocks ``ids`` of ``tensor`` (a layer's paged KV cache) as the target of an access,
    so accesses to other blocks of it, on other streams, are not taken for a hazard."""
    return BlockSet(tensor, frozenset(int(i) for i in ids))


def _access(item: Any) -> tuple[tuple[int, int], Blocks]:
    """(buffer key, blocks) of a tensor or a :class:`BlockSet`."""
    if isinstance(item, BlockSet):
        return tensor_key(item.tensor), item.ids
    return tensor_key(item), None


def tensor_key(tensor: Any) -> tuple[int, int]:
    """(device, data pointer): how handoffs name a tensor (torch or simulated)."""
    if isinstance(tensor, BlockSet):
        tensor = tensor.tensor
    return (int(tensor.get_device()), int(tensor.data_ptr()))


def handoff(tensor: Any, stream: Any = None, access: str = "write") -> Handoff | None:
    """Declare an access to ``tensor`` (or some of its :func:`blocks`) on ``stream`` (default:
    the thread's current one) now.

    ``access="write"`` (the default): the tensor is complete on ``stream``. A connector's
    ``save_kv_layer`` calls this with the layer's KV: a later ``launch(..., reads=[...])`` on
    another stream must be ordered after this point by an event, or it is an
    ``unsynced-handoff``; a later ``launch(..., writes=[...])`` likewise, or it is a
    ``write-after-write``. ``access="read"``: the engine queued a read of the tensor (attention
    reading a KV block) on ``stream``; a later ``launch(..., writes=[...])`` of it on another
    stream must be ordered after this point, or it is a ``write-after-read``.

    Returns the handoff (None when not auditing): work queued for later should carry it and
    pass it in ``reads``, because the same tensor may be handed off again before the queued
    work runs.
    """
    made = _fast_declare((tensor,), stream, access) if _fast_declare is not None else None
    if made is None:
        made = _declare_accesses([tensor], stream, access)
    return made[0] if made else None


def handoffs(tensors: Iterable[Any], stream: Any = None, access: str = "write"
             ) -> tuple[Handoff, ...]:
    """:func:`handoff` of several tensors (or :func:`blocks` of them) at one point on one
    stream (default: the thread's current one on the first tensor's device): one clock tick,
    one call site, one lock for them all, where a call each would make one of each. A
    connector's ``save_kv_layer`` declares a layer's K and V planes so, once per layer per
    step. Returns the handoffs in the order of ``tensors`` (empty when not auditing)."""
    items = tuple(tensors)
    made = _fast_declare(items, stream, access) if _fast_declare is not None else None
    return made if made is not None else _declare_accesses(list(items), stream, access)


def _declare_accesses(items: list[Any], stream: Any, access: str) -> tuple[Handoff, ...]:
    """What :func:`handoff` and :func:`handoffs` do; the site kept is their caller's line.
    The compiled part (:data:`_fast_declare`) takes the common case first."""
    auditor = current_auditor()
    if auditor is None or not items:
        return ()
    first = _access_stream(items[0], stream)
    if first is None:
        return ()
    if access not in ("write", "read"):
        raise ValueError(f"access must be 'write' or 'read', not {access!r}")
    try:  # the first one's access was read with its stream
        accesses = [first[0], *[_access(item) for item in items[1:]]]
    except Exception as exc:
        warn_cannot_audit("streamcheck.handoff", exc)
        return ()
    reads, writes = ((), accesses) if access == "write" else (accesses, ())
    # the frames between the caller and the site: declare, this, handoff(s)
    return tuple(auditor.declare(first[1], reads, writes, skip=3))


def _access_stream(tensor: Any, stream: Any
                   ) -> tuple[tuple[tuple[int, int], Blocks], StreamRef] | None:
    """((tensor key, blocks), stream ref) for a declared access, or None (warned) when
    unreadable."""
    try:
        first = _access(tensor)
        key = first[0]
        if stream is None:
            whole = tensor.tensor if isinstance(tensor, BlockSet) else tensor
            own = getattr(whole, "stream_reader", None)
            if own is not None:  # a simulated tensor: its machine's reader
                reader = own()
                sid, dev, _ = reader.current_stream(key[0])
                ref = StreamRef(dev, sid, reader.current_raw_stream(key[0]))
            else:
                sid, dev, _ = current_stream_of(key[0])
                ref = StreamRef(int(dev), int(sid))
        else:
            ref = _ref_of(stream)
    except Exception as exc:
        warn_cannot_audit("streamcheck.handoff", exc)
        return None
    return first, ref


class launch:
    """Audit one launch of ``name``; see the module docstring."""

    __slots__ = ("device", "name", "reads", "resolved_from", "stream", "writes")

    def __init__(self, name: str, stream: Any = None, device: int | None = None,
                 resolved_from: str = "", reads: tuple[Any, ...] | list[Any] = (),
                 writes: tuple[Any, ...] | list[Any] = ()) -> None:
        self.name = name
        self.reads = tuple(reads)
        # made at every connector launch: no generator for one that writes nothing
        self.writes = tuple(w for w in writes if w is not None) if writes else ()
        self.stream = stream
        self.device = device
        self.resolved_from = resolved_from

    def check(self) -> None:
        """Check the launch (raises in ``assert`` mode on a hazard), then declare its accesses.
        The compiled check (:data:`_fast_check`) takes the common case first: it returns
        False, having done nothing, for any launch it leaves to this method."""
        auditor = current_auditor()
        if auditor is None:
            return
        try:
            stream = self.stream if self.stream is not None else _current_stream_obj(self.device)
            ref = _ref_of(stream)  # the stream's fields, read once
            device = self.device if self.device is not None else ref.device
            try:
                current: tuple[Any, Any, Any] = _current_of(stream, device)
            except Exception:
                if self.resolved_from:  # the launch is checked against it: cannot audit
                    raise
                current = (None, None, None)  # only a finding's report would name it
            handoffs: list[Handoff] = []
            read: list[tuple[tuple[int, int], Blocks]] = []  # each read access, once
            for t in self.reads:
                if isinstance(t, Handoff):
                    handoffs.append(t)
                    read.append((t.tensor, t.blocks))
                elif t is not None:
                    key, chosen = _access(t)
                    read.append((key, chosen))
                    handoffs += auditor.writes_of(key, chosen)  # their latest writes
            written = [_access(t) for t in self.writes]
        except Exception as exc:  # no GPU, a CPU tensor's device, ...: say so, never crash
            warn_cannot_audit(self.name, exc)
            return
        auditor.admit(self.name, ref.device, ref.stream_id, stream,
                      current[1], current[0], self.device, bool(self.resolved_from),
                      self.resolved_from, reads=tuple(handoffs),
                      writes=auditor.write_targets(written) if written else ())
        # Passed (or recorded, outside assert): what this launch does is what later ones must
        # be ordered after.
        if read or written:
            auditor.declare(ref, list(dict.fromkeys(read)), list(dict.fromkeys(written)), skip=3)

    def __enter__(self) -> launch:
        if _fast_check is None or not _fast_check(self):
            self.check()
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def audited(*args: Any, **kwargs: Any) -> Any:
            if _fast_check is None or not _fast_check(self):
                self.check()
            return fn(*args, **kwargs)

        return audited  # type: ignore[return-value]


#: launch.check's common case compiled (``LaunchCheck``, streamcheck/_launch_check.c): an
#: explicit stream, reads that are ordered handoffs, no writes. It returns False, having done
#: nothing, for every other launch, which :meth:`launch.check` then decides. None with the
#: Python core.
_fast_check: Callable[[launch], bool] | None = None


#: _declare_accesses's common case compiled (``HandoffDeclare``, streamcheck/_handoffs.c):
#: tensors or their blocks, an explicit stream or the current one of a real (not simulated)
#: tensor. It returns the handoffs, or None, having declared nothing, for every other call,
#: which :func:`_declare_accesses` then makes. None with the Python core.
_fast_declare: Callable[[tuple[Any, ...], Any, str], tuple[Handoff, ...] | None] | None = None


def _choose_compiled_parts(compiled: ModuleType | None) -> None:
    """The compiled check and handoff of the chosen core, where it has them and can read the
    classes' slots (a class laid out otherwise: Python's, never a failed import)."""
    global _fast_check, _fast_declare
    try:
        _fast_check = None if compiled is None or not hasattr(compiled, "LaunchCheck") else (
            compiled.LaunchCheck(GATE, launch, Handoff, Mark, _ref_of, DEFAULT_STREAM_ID))
    except TypeError:
        _fast_check = None
    try:
        _fast_declare = (
            None if compiled is None or not hasattr(compiled, "HandoffDeclare") else
            compiled.HandoffDeclare(GATE, BlockSet, _ref_of, StreamRef, current_stream_of,
                                    vars(cuda)))
    except TypeError:
        _fast_declare = None


speedups.follow(_choose_compiled_parts)
