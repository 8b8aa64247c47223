"""Which implementation the hottest hooks use: compiled (``streamcheck._speedups``) or Python.

Every stream switch goes through the ``set_stream`` hook and every collective through a launch
wrapper; in Python each costs a frame and a handful of attribute reads and calls, in C a few
pointer reads (docs/measurements.md has both, measured in one run). The C versions decide
nothing themselves that the Python ones would decide differently: a launch that is not plainly
fine is handed to the Python wrapper. The extension is optional, as coverage.py's C tracer is:
where it was not built (no compiler at install, CPython before 3.11, another interpreter) the
Python hooks are used, and ``streamcheck env`` says which and why.

The choice is the ``core`` setting (``STREAMCHECK_CORE``): ``auto`` (compiled when built),
``compiled`` (an error when it was not built), ``python``. It applies to hooks made after it.
"""

from __future__ import annotations

import itertools
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path

from streamcheck.core import auditor, coverage, ids, locks, provenance
from streamcheck.core.modes import ConfigError

CORES = ("auto", "compiled", "python")

try:
    import streamcheck._speedups as _built
except ImportError as exc:  # not built here
    _built: types.ModuleType | None = None  # type: ignore[no-redef]
    _missing = f"{type(exc).__name__}: {exc}"
else:
    _missing = ""

_active: types.ModuleType | None = _built
#: Called with the chosen module (None: Python) at every choice: the wrappers above that keep
#: a compiled part of their own (``user_launch``) choose it here, as hooks made later do.
_followers: list[Callable[[types.ModuleType | None], None]] = []


def use(core: str) -> None:
    """Use ``core`` for the hooks made from now on."""
    global _active
    if core not in CORES:
        raise ConfigError(f"core {core!r}: expected one of {', '.join(CORES)}")
    if core == "compiled" and _built is None:
        raise ConfigError(f"core 'compiled': streamcheck._speedups is not built here "
                          f"({_missing}); reinstall with a C compiler, or use 'auto'")
    _active = None if core == "python" else _built
    _use_core_parts()


def _use_core_parts() -> None:
    """Records take their sites (``core.ids.site_capture``) from the chosen core: the same
    tuple either way, made in C with the compiled one; books made from now on keep their
    switches in its log (``core.provenance.make_switch_log``), which the compiled hook fills
    without making the tuples, and their creations in its table
    (``core.provenance.make_creation_table``), which the compiled creation hook fills so;
    auditors made from now on declare accesses through its ``Declarer``
    (``core.auditor.make_declare``); launch sites counted from now on count on its
    ``LaunchCounter`` (``core.coverage.make_counter``), which its hooks advance in place;
    and the auditors and clocks made from now on keep their state under its ``FastLock``
    (``core.locks.make_lock``), which its declare and merges take without a call."""
    ids.site_capture = ids.capture_site if _active is None else _active.capture_site
    provenance.make_switch_log = (provenance.deque_log if _active is None
                                  else _active.SwitchLog)
    provenance.make_creation_table = dict if _active is None else _active.CreationTable
    auditor.make_declare = getattr(_active, "Declarer", None)
    coverage.make_counter = getattr(_active, "LaunchCounter", itertools.count)
    locks.make_lock = getattr(_active, "FastLock", threading.Lock)
    for follower in _followers:
        follower(_active)


def follow(choose: Callable[[types.ModuleType | None], None]) -> None:
    """Call ``choose`` with the chosen core's module (None: Python) now and at every
    :func:`use`: how a module above this one picks its own compiled part."""
    _followers.append(choose)
    choose(_active)


def built() -> bool:
    """Whether the extension was built for this interpreter."""
    return _built is not None


def active() -> types.ModuleType | None:
    """The compiled module the next hooks use, or None for the Python ones."""
    return _active


def read_streams_natively(reader: Callable[[int], object] | None) -> bool:
    """Let the compiled hooks read a device's current stream through the C++ functions behind
    ``reader`` when it is torch's ``_cuda_getCurrentRawStream`` (a ``stream=None`` launch's
    check; its Python call alone took 87-96 ns on H200 hosts, of that launch's 252-330 added)
    or ``_cuda_getCurrentStream`` (a ``torch.distributed`` collective's; 120 ns): in the
    libc10_cuda torch has loaded, used once both agreed with torch on a non-default stream
    (the engine's own, or a made-up one set current for the proof, through torch's
    ``_cuda_setStream``, and set back) and for devices torch's read answered for
    (streamcheck/_native_streams.c). Imports nothing and starts nothing (no CUDA call here):
    False where torch is not imported or has no CUDA library loaded, or the Python core is
    chosen."""
    torch = sys.modules.get("torch")
    if _active is None or reader is None or torch is None:
        return False
    torch_c = getattr(torch, "_C", None)
    names = ("_cuda_getCurrentRawStream", "_cuda_getCurrentStream", "_cuda_setStream",
             "_cuda_getDevice")
    raw, current, set_stream, get_device = calls = [getattr(torch_c, n, None) for n in names]
    if reader is not raw and reader is not current:
        return False
    if not all(torch_own(call, torch_c) for call in calls):
        return False  # one replaced (a test's stand-in, a wrapper): it answers, not C++
    library = Path(torch.__file__).parent / "lib" / "libc10_cuda.so"
    return bool(_active.native_raw_streams(str(library), raw, current, set_stream,
                                           get_device))


def torch_own(call: object, torch_c: object) -> bool:
    """Whether ``call`` is one of ``torch_c``'s own C functions (a builtin bound to that
    module): the native reads stand in only for those. A replaced one (a test's stand-in, a
    wrapper) keeps its answers, which the C++ functions would not give."""
    return (isinstance(call, types.BuiltinFunctionType)
            and getattr(call, "__self__", None) is torch_c)


def stream_reads() -> str:
    """How this process's hooks read current streams, for its report: a check that found
    nothing says what it read with. ``native`` once the C++ read was proven (and on which
    devices), ``torch's`` until then, where it is not found, or after a disagreement turned
    it off; the Python hooks always ask torch."""
    if _active is None:
        return "torch's (the Python hooks)"
    found, proven, answered, off = _active.native_raw_streams_state()
    if off:
        return "torch's (the native read disagreed with torch's once: turned off)"
    if found and proven:
        devices = ", ".join(str(d) for d in range(answered.bit_length()) if answered >> d & 1)
        return f"native (c10::cuda), proven; devices {devices or 'none yet'}"
    if found:
        return "torch's (the native read not proven yet)"
    return "torch's"


def describe() -> str:
    """One line for ``streamcheck env`` and reports."""
    if _active is not None:
        return "compiled (streamcheck._speedups)"
    if _built is None:
        return f"python (the extension is not built: {_missing})"
    return "python (chosen)"


_use_core_parts()  # the default core, until use() chooses
