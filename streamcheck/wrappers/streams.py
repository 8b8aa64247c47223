"""Hooks that feed stream provenance: creation and every way a stream becomes current.

They work on any ``torch.cuda``-shaped namespace (``torch.cuda`` itself, or a simulator's),
because legacy caches patch exactly that surface. ``torch.Stream`` used as a context manager is
implemented in C and cannot be hooked; a launch made under one is still caught, by comparing
with the thread's real current stream at the launch (``stale-stream-cache``).
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from typing import Any

from streamcheck.core import ids
from streamcheck.core.auditor import Auditor
from streamcheck.core.ids import StreamRef
from streamcheck.core.records import StreamEvent
from streamcheck.wrappers import speedups
from streamcheck.wrappers.gate import Gate
from streamcheck.wrappers.registry import PatchRegistry


class DeviceHome:
    """The device of one process view's engine: the ``set_device`` its engine threads made
    through that namespace (one ``torch.cuda``; one simulated rank's namespace). A stream a
    helper thread creates on its current device is checked against it. Once engine threads
    have chosen two different devices (several engines in one process, an engine that moves)
    no single device is "the engine's": :attr:`device` is then None and nothing is checked.
    :attr:`device` is a slot, kept in step by :meth:`chosen`: the compiled creation hook reads
    it in place at every ``Stream()``."""

    __slots__ = ("_lock", "_seen", "device")

    def __init__(self, device: int | None = None) -> None:
        self._seen: set[int] = set() if device is None else {device}
        self.device: int | None = device
        self._lock = threading.Lock()  # two engines' set_device at once: no update lost

    def chosen(self, device: int) -> None:
        """An engine thread made ``device`` its current device."""
        with self._lock:
            self._seen.add(device)
            self.device = device if len(self._seen) == 1 else None


def names_a_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``Stream(*args, **kwargs)`` names a device index (``Stream(1)``,
    ``Stream(device="cuda:1")``), rather than taking the thread's current device (no device,
    ``"cuda"``, ``torch.device("cuda")``)."""
    if "stream_ptr" in kwargs:  # an ExternalStream: made elsewhere, on its own device
        return True
    device = kwargs.get("device", args[0] if args else None)
    if device is None:
        return False
    if isinstance(device, str):
        return ":" in device
    if isinstance(device, int):
        return True
    return getattr(device, "index", None) is not None


def stream_ref(stream: Any) -> StreamRef:
    """Any stream-like object (torch.cuda.Stream, torch.Stream, sim stream) as a StreamRef."""
    return StreamRef(int(stream.device_index), int(stream.stream_id),
                     int(getattr(stream, "cuda_stream", 0) or 0))


def _event(auditor: Auditor, kind: str, stream: Any, via: str) -> StreamEvent:
    """The creation as the book keeps it: the creating frames as a site (code objects and
    offsets), formatted into a stack only if a finding names this stream's origin."""
    ident = threading.get_ident()
    return StreamEvent(
        kind=kind, stream=stream_ref(stream),
        thread=auditor.thread_ref(ident), time=time.time(),
        stack=ids.site_capture(skip=2, depth=12), via=via,  # type: ignore[arg-type]
    )


def made_current_hook(gate: Gate, original: Any, via: str, key_type: type | None = None
                      ) -> Any:
    """``original(stream)`` that first tells the book which thread made ``stream`` current.

    The hot path of every stream switch: no names, no formatted stacks, no locks; the two
    calling frames are kept as code objects and instruction offsets (a field read, where a
    line number decodes the line table), turned into lines only for a finding. The compiled
    hook keeps a stream of exactly ``key_type`` as its key, rebuilt from it only for a
    finding, so no stream object outlives its switch (``key_type(stream_id=...,
    device_index=..., device_type=...)`` must wrap the same stream, as torch.cuda.Stream's
    does); the Python hook keeps every stream object.
    """
    compiled = speedups.active()
    if compiled is not None:  # the same record, made in C (streamcheck/_speedups.c)
        hook = compiled.SetStreamHook(gate, original, via, key_type)
        functools.update_wrapper(hook, original)
        return hook
    getframe, get_ident = sys._getframe, threading.get_ident

    @functools.wraps(original)
    def set_stream(stream: Any) -> Any:
        auditor = gate.auditor
        if auditor is not None and stream is not None:
            caller = getframe(1)
            outer = caller.f_back
            if outer is None:
                auditor.made_current((stream, get_ident(), via, caller.f_code,
                                      caller.f_lasti, None, 0))
            else:
                auditor.made_current((stream, get_ident(), via, caller.f_code,
                                      caller.f_lasti, outer.f_code, outer.f_lasti))
        return original(stream)

    return set_stream


def hook_set_stream(registry: PatchRegistry, gate: Gate, namespace: Any, label: str) -> None:
    """Record every ``namespace.set_stream(s)``; stream contexts call it too. torch.cuda's
    streams are kept by their key (a simulator's stream types are not rebuilt from one)."""
    via = f"{label}.set_stream"
    key_type = getattr(namespace, "Stream", None) if label == "torch.cuda" else None
    registry.patch(namespace, "set_stream", lambda original: made_current_hook(
        gate, original, via, key_type if isinstance(key_type, type) else None))


def hook_stream_creation(registry: PatchRegistry, gate: Gate, stream_class: type,
                         label: str, home: DeviceHome | None = None) -> None:
    """Record the creating thread of every stream of ``stream_class``; one created on the
    thread's current device is checked against ``home`` (its process's engine device)."""
    via = f"{label}.Stream()"

    def created(stream: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        auditor = gate.auditor
        if auditor is not None:
            implied = home is not None and not names_a_device(args, kwargs)
            auditor.stream_created(_event(auditor, "created", stream, via),
                                   home.device if implied else None)  # type: ignore[union-attr]
    if "__new__" in stream_class.__dict__ and label == "torch.cuda":
        impl = stream_class.__dict__["__new__"]
        impl = impl.__func__ if isinstance(impl, staticmethod) else impl

        def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
            stream = impl(cls, *args, **kwargs)
            # torch.cuda.current_stream() and friends wrap an EXISTING stream by passing its
            # stream_id: that is not a creation, and recording it would erase its history.
            if "stream_id" not in kwargs:
                created(stream, args, kwargs)
            return stream

        compiled = speedups.active()
        # the same in C: a wrap (torch's own current_stream() taken before the audit started,
        # which some kernels' modules import by name) then costs no Python frame, and a plain
        # creation on the engine's device is recorded there, in the book's own form, with no
        # StreamEvent made until a finding asks for the stream's origin
        # (a torch.cuda.Stream's key read from its fields in place, as the set_stream hook's)
        hook = (compiled.CreationHook(impl, created, gate, via, home,
                                      threading._active,  # type: ignore[attr-defined]
                                      stream_class)
                if compiled is not None else __new__)
        registry.patch(stream_class, "__new__", lambda _current: staticmethod(hook))
        return

    def make_init(original: Any) -> Any:
        @functools.wraps(original)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            created(self, args, kwargs)

        return __init__

    registry.patch(stream_class, "__init__", make_init)


def hook_accelerator_set_stream(registry: PatchRegistry, gate: Gate, accelerator: Any) -> None:
    """``torch.accelerator.set_stream`` bypasses ``torch.cuda.set_stream``: record it too."""
    if accelerator is None or not hasattr(accelerator, "set_stream"):
        return
    registry.patch(accelerator, "set_stream", lambda original: made_current_hook(
        gate, original, "torch.accelerator.set_stream"))


def fast_current_stream(registry: PatchRegistry, cuda: Any) -> None:
    """``torch.cuda.current_stream`` that builds its Stream with the original ``__new__``.

    The hook on ``Stream.__new__`` (creations) would otherwise run for every
    ``current_stream()`` too, which wraps an existing stream: stream contexts, event records
    and engines call it on every switch. This does what torch's own does, with one Python frame
    fewer than torch's plus the hook: the same answer, at no added cost. The original is the
    one from before ``registry`` hooked ``__new__``, whichever was patched first (read from the
    class after the hook, it was the hook, and every ``current_stream()`` paid its frame).

    ``device`` None (a stream context's every enter, an event record's) or an int is resolved
    as torch's ``_get_device_index`` resolves it (the current device; the int itself) with one
    C read instead of its three Python frames; anything else goes through that function. With
    the compiled core the whole function is C (``CurrentStream``): CUDA's initialization read
    as ``torch.cuda.is_initialized`` reads it, the current stream natively once proven, and
    only ``Stream.__new__``'s Python frame left.
    """
    import torch

    stream_class = cuda.Stream
    impl = registry.original(stream_class, "__new__")
    index = getattr(cuda, "_get_device_index", None)
    reader = getattr(torch._C, "_cuda_getCurrentStream", None)
    get_device = getattr(torch._C, "_cuda_getDevice", None)
    lazy_init = getattr(cuda, "_lazy_init", None)
    if None in (impl, getattr(cuda, "current_stream", None), index, reader, get_device,
                lazy_init):
        return  # another torch layout: keep its own current_stream
    impl = impl.__func__ if isinstance(impl, staticmethod) else impl
    compiled = speedups.active()
    in_bad_fork = getattr(cuda, "_is_in_bad_fork", None)

    def make(_original: Any) -> Any:
        if compiled is not None and in_bad_fork is not None:
            # the same in C, with Stream.__new__'s frame alone (streamcheck/_current_stream.c)
            return functools.update_wrapper(compiled.CurrentStream(
                vars(cuda), in_bad_fork, lazy_init, get_device, index, reader, impl,
                stream_class), _original)

        @functools.wraps(_original)
        def current_stream(device: Any = None) -> Any:
            lazy_init()
            if device is None:
                device = get_device()
            elif type(device) is not int:  # a str, torch.device, torch.cuda.device
                device = index(device, optional=True)
            sid, dev, kind = reader(device)
            return impl(stream_class, stream_id=sid, device_index=dev, device_type=kind)

        return current_stream

    registry.patch(cuda, "current_stream", make)
