"""Audit methods that launch on a stream, resolving ``stream=None`` exactly as the callee will.

vLLM's ``PyNcclCommunicator`` methods, our own NCCL binding and the simulator's communicator
all take ``stream=None`` and then ask an accessor for "the current stream". The wrapper asks
the same accessor first, audits the launch with that stream, and passes it on explicitly, so
``assert`` mode can stop the launch before the callee reaches NCCL (and the callee does not
ask the accessor a second time).

The wrapper's inline test is the hot path: it lets a launch through only when
:meth:`Auditor.admit` would (same device, the thread's real current stream for an implicit
launch, and the default stream only from the main thread while it is the engine thread:
``Auditor.main_engine``, which the auditor's thread roles keep); everything else goes to
``admit``, which applies the rules. tests/wrappers/test_fast_path.py checks that implication.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from streamcheck.wrappers import speedups
from streamcheck.wrappers.gate import Gate
from streamcheck.wrappers.generated import (
    defaults_namespace,
    globals_for,
    parameter_names,
    signature_source,
)
from streamcheck.wrappers.registry import PatchRegistry

CurrentStreamTuple = tuple[int, int, int]
"""The calling thread's real current stream on a device: (stream id, device, device type)."""


_warned: set[tuple[str, str]] = set()

#: The names the generated wrappers' code binds or reads besides the method's parameters and
#: its globals: a method with a parameter of one of these names is not wrapped (the wrapper
#: would hand the method its own value, or call the parameter).
_WRAPPER_NAMES = frozenset({"auditor", "target", "implicit", "fast", "sdev", "cur", "sid",
                            "handle", "exc", "original", "slow", "_stream", "_skip",
                            "_check_given", "_check_resolved"})


def warn_cannot_audit(op: str, exc: Exception) -> None:
    """Say once per (op, reason) that a launch could not be audited, and why."""
    key = (op, type(exc).__name__)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(
        f"streamcheck could not audit {op}: {type(exc).__name__}: {exc}. The call goes ahead "
        "unaudited (is it given CUDA tensors on a machine with a GPU?)",
        RuntimeWarning, stacklevel=3,
    )


def wrap_stream_method(registry: PatchRegistry, gate: Gate, cls: type, method: str, op: str,
                       resolve: Callable[[Any], Any] | str | None, device_expr: str, accessor: str,
                       current_of_device: Callable[[int], CurrentStreamTuple] | None = None,
                       current_of_comm: Callable[[Any, int], CurrentStreamTuple] | None = None,
                       skip_expr: str = "False", fixed_device: bool = False,
                       target: str = "",
                       current_device: Callable[[], int] | None = None,
                       names: dict[str, Any] | None = None,
                       current_raw_stream: Callable[[int], int] | None = None) -> bool:
    """Patch ``cls.method`` so each call is audited before it runs.

    ``device_expr`` is a Python expression over ``self`` giving the device the
    communicator's tensors live on (``"self.device"``: an index or a ``torch.device``). Give
    ``current_of_device`` (CUDA: ``torch._C._cuda_getCurrentStream``) or, where the truth
    depends on the communicator (the simulator's machine), ``current_of_comm``. ``skip_expr``
    (over ``self``) marks calls that launch nothing, e.g. vLLM's ``self.disabled``
    communicators: they are not audited.
    ``fixed_device`` says the communicator's device never changes (an NCCL communicator is
    bound to one device for life): ``device_expr`` is then read once per instance and kept in
    its ``_streamcheck_device`` attribute, one dict lookup per call instead of two attribute
    reads through torch (about 30 ns of the audit's cost per launch).

    ``resolve(self)`` returns the stream the method picks when it is given none (the accessor
    it calls). With a ``stream`` parameter, that stream is passed on explicitly, so the callee
    launches on exactly the stream audited; without one (SGLang's pynccl resolves inside every
    method) the call goes ahead unchanged. ``resolve=None`` means the thread's real current
    stream on its current device (``current_device()``): nothing to pass on, and only the
    device and the calling thread can be wrong. Each launch advances the counter of ``op`` in
    the auditor's coverage, attributed to ``target``. A string ``resolve`` is an expression
    over ``self`` and ``names`` put inline, e.g. ``"_holder.current_stream()"``: one call
    fewer than a callable.

    The wrapper is generated with the callee's own signature (as :mod:`dataclasses` generates
    ``__init__``): no ``*args``/``**kwargs`` repacking and no helper calls on the hot path,
    which halves its cost against a generic wrapper.

    The common launches are let through on fewer reads than the full test needs (each read of
    a torch stream's attribute or of the thread's current stream costs about 100-200 ns):

    * ``stream=None`` with ``current_raw_stream`` (the thread's current ``cudaStream_t`` on a
      device): the resolved stream's handle equal to the current one on the target device
      means the same stream, on that device. Handles 0-2 (the legacy and per-thread default
      streams) name a stream on every device, so those take the full test here; the compiled
      wrapper checks the stream's device and the main engine thread instead, which is that
      test's answer without the stream id and the current-stream tuple;
    * an explicit stream from the main thread while it is the engine thread
      (``auditor.main_engine``): its device is all there is to check (the default-stream rule
      spares engine threads), so its id is not read.
    """
    if not hasattr(cls, method):
        return False
    if (current_of_device is None) == (current_of_comm is None):
        raise ValueError("give exactly one of current_of_device / current_of_comm")
    if resolve is None and current_device is None:
        raise ValueError("resolve=None (the thread's current stream) needs current_device")
    original = getattr(cls, method)
    params, call, has_stream = signature_source(original)
    if params is None:
        raise ValueError(f"cannot read the signature of {cls.__name__}.{method}")
    current = ("_current_of_device(target)" if current_of_device is not None
               else "_current_of_comm(self, target)")
    target_code = f"target = _index_of({device_expr})"
    if fixed_device and getattr(cls, "__dictoffset__", 0):  # instances can keep an attribute
        target_code = f"""try:
                target = self._streamcheck_device
            except AttributeError:
                target = self._streamcheck_device = _index_of({device_expr})"""
    if resolve is None:
        resolved = """fast = False
                sdev = _current_device()
                cur = _current_of_device(sdev) if _current_of_device is not None \
                    else _current_of_comm(self, sdev)
                sid = cur[0]
                _stream = None"""
    else:
        expr = resolve if isinstance(resolve, str) else "_resolve(self)"
        resolved = f"""_stream = {expr}"""
        if has_stream:
            resolved += "\n                stream = _stream"
        if current_raw_stream is not None:
            resolved += """
                handle = _getattr(_stream, "cuda_stream", 0)
                fast = handle > 2 and handle == _current_raw_stream(target)"""
        else:
            resolved += "\n                fast = False"
        resolved += f"""
                if not fast:
                    cur = {current}
                    sid = _stream.stream_id
                    sdev = _stream.device_index"""
    if has_stream:
        implicit = "implicit = stream is None"
        explicit = """sdev = stream.device_index
                fast = sdev == target and _get_ident() == auditor.main_engine
                if not fast:
                    sid = stream.stream_id"""
    else:
        implicit = "implicit = True"
        explicit = "fast = False"
    source = f"""
def make(original):
    def audited({params}):
        auditor = _gate.auditor
        if auditor is None or {skip_expr}:
            return original({call})
        try:
            {target_code}
            {implicit}
            if implicit:
                {resolved}
            else:
                {explicit}
        except Exception as exc:
            _warn(_op, exc)
            return original({call})
        if auditor is _owner:
            next(_counter)
        else:
            next(auditor.coverage.counter(_op, _target))
        if fast:
            return original({call})
        if implicit:
            if sid == cur[0] and sdev == target and (sid or _get_ident() == auditor.main_engine):
                return original({call})
            auditor.admit(_op, sdev, sid, _stream, cur[1], cur[0], target, True, _accessor,
                          counted=True)
        else:
            if sdev == target and (sid or _get_ident() == auditor.main_engine):
                return original({call})
            auditor.admit(_op, sdev, sid, stream, None, None, target, False, _accessor,
                          counted=True)
        return original({call})
    return _functools.wraps(original)(audited)
"""
    owner, counter = site_counter(gate, op, target)
    namespace: dict[str, Any] = {
        "_gate": gate, "_resolve": resolve, "_current_of_device": current_of_device,
        "_current_raw_stream": current_raw_stream, "_getattr": getattr,
        "_current_of_comm": current_of_comm, "_current_device": current_device,
        "_warn": warn_cannot_audit, "_op": op, "_target": target, "_index_of": device_index,
        "_owner": owner, "_counter": counter,
        "_accessor": accessor, "_get_ident": threading.get_ident, "_functools": functools,
        **(names or {}), **defaults_namespace(original),
    }
    clashing = parameter_names(original) & (_WRAPPER_NAMES | namespace.keys())
    if clashing:  # the parameter would hide the wrapper's own name, or take its value
        raise ValueError(f"cannot audit {cls.__name__}.{method}: its parameter "
                         f"{', '.join(sorted(clashing))} has a name the generated wrapper uses")
    exec(compile(source, f"<streamcheck wrapper of {cls.__name__}.{method}>", "exec"), namespace)
    make = namespace["make"]
    compiled = _compiled_maker(gate, owner, counter, make, original, resolve, namespace,
                               params, call, skip_expr,
                               fixed_device and bool(getattr(cls, "__dictoffset__", 0)),
                               current_raw_stream, current_of_device)
    return registry.patch(cls, method, compiled or make)


def _compiled_maker(gate: Gate, owner: Any, counter: Any, python_make: Callable[[Any], Any],
                    original: Any, resolve: Callable[[Any], Any] | str | None,
                    namespace: dict[str, Any], params: str, call: str, skip_expr: str,
                    keeps_device: bool, current_raw_stream: Callable[[int], int] | None,
                    current_of_device: Callable[[int], CurrentStreamTuple] | None
                    ) -> Callable[[Any], Any] | None:
    """A maker of the wrapper with the compiled check (``_speedups.StreamCheck``), or None
    where it does not apply (not built or not chosen, no ``stream=None`` parameter, no
    resolver, a device read per call): then the Python wrapper alone is installed.

    The wrapper is a second generated function: the skip test read as the Python wrapper
    reads it; a given stream checked at once; for ``stream=None`` the stream resolved by the
    same expression, inline, and checked; then the method called with the stream checked.
    The gate is read by the check alone, in place (with no auditor there it lets the call go
    ahead, uncounted, the resolved stream passed as the method would have resolved it): a
    read of ``_gate.auditor`` in Python took a reference to the auditor, a write to an object
    other threads' hooks read too, and an engine's launch finds its line out of the cache.
    Every launch the check does not
    let through (and an accessor that raised) goes to the Python wrapper, which applies every
    rule. Python calls Python here as it calls the method unaudited, pushing a frame; a
    compiled wrapper had to enter the interpreter from C twice a launch (the accessor, the
    method), code that an engine's other work leaves cold. The check is held as its bound
    ``passes`` method: a builtin method, which the interpreter calls by its specialized path
    for builtins (83 fewer instructions a launch than calling the object,
    scripts/bench_hook_instructions.py)."""
    compiled = speedups.active()
    if compiled is None or counter is None or not keeps_device or resolve is None:
        return None
    try:
        stream = inspect.signature(original).parameters.get("stream")
    except (TypeError, ValueError):
        return None
    if (stream is None or stream.default is not None
            or stream.kind in (stream.VAR_KEYWORD, stream.POSITIONAL_ONLY)):
        return None
    expr = resolve if isinstance(resolve, str) else "_resolve(self)"
    # the call with the resolved stream in the stream parameter's place
    resolved_call = ", ".join("_stream" if arg == "stream" else
                              "stream=_stream" if arg == "stream=stream" else arg
                              for arg in call.split(", "))
    # the skip test first, as the Python wrapper's: one that raises goes to that wrapper, which
    # reads the gate before it (so it raises only where an audit runs), as it always did
    skipped = "" if skip_expr == "False" else f"""
        try:
            _skip = {skip_expr}
        except Exception:
            return slow({call})
        if _skip:
            return original({call})"""
    source = f"""
def make(original, slow):
    def audited({params}):{skipped}
        if stream is not None:  # the check reads the gate: with none there, True
            if _check_given(self, stream):
                return original({call})
            return slow({call})
        try:
            _stream = {expr}
        except Exception:
            return slow({call})
        if _check_resolved(self, _stream):
            return original({resolved_call})
        return slow({call})
    return _functools.wraps(original)(audited)
"""
    # torch's stream type, whose resolved streams are told by their key read in place once
    # the current stream is read natively (only then: a simulator's reader never is)
    key_type = (getattr(getattr(sys.modules.get("torch"), "cuda", None), "Stream", None)
                if speedups.read_streams_natively(current_raw_stream) else None)
    checks = {f"_check_{name}": compiled.StreamCheck(gate, owner, counter, resolved,
                                                      current_raw_stream, current_of_device,
                                                      key_type).passes
              for name, resolved in (("resolved", True), ("given", False))}
    name = getattr(original, "__qualname__", "a launch")
    code = compile(source, f"<streamcheck checked wrapper of {name}>", "exec")
    shell = globals_for(code, {**namespace, **checks}, first=("_check_given", "_check_resolved"))
    exec(code, shell)
    make_checked = shell["make"]

    def make(original: Any) -> Any:
        return make_checked(original, python_make(original))

    return make


def device_index(device: Any) -> int:
    """A device as its index: an int stays, ``torch.device("cuda", 1)`` gives 1."""
    if isinstance(device, int):
        return device
    index = getattr(device, "index", None)
    if index is None:
        raise TypeError(f"cannot tell the device index of {device!r}")
    return int(index)


def site_counter(gate: Gate, op: str, target: str) -> tuple[Any, Any]:
    """(the auditor installing a wrapper, its counter for ``op``): a wrapper advances that
    counter while that auditor is the gate's, and asks the current one otherwise."""
    owner = gate.auditor
    return owner, owner.coverage.counter(op, target) if owner is not None else None


def wrap_current_stream_call(registry: PatchRegistry, gate: Gate, owner: Any, name: str,
                             op: str, reader: Any, target: str = "") -> bool:
    """Audit ``owner.name`` as a launch on the calling thread's current stream.

    For calls that take no stream and launch on whatever is current (a KV connector's
    ``save_kv_layer``, ``start_load_kv``): the stream is right by construction, so what can be
    wrong is the thread (a helper on the legacy default stream while the engine computes on
    another). Costs two C++ reads and a counter on the path that finds nothing; ``reader`` is
    a :class:`streamcheck.runtime.cuda.StreamReader`.
    """
    current_stream, current_device = reader.current_stream, reader.current_device
    get_ident = threading.get_ident

    def make(original: Any) -> Any:
        owner_auditor, counter = site_counter(gate, op, target)

        @functools.wraps(original)
        def audited(*args: Any, **kwargs: Any) -> Any:
            auditor = gate.auditor
            if auditor is None:
                return original(*args, **kwargs)
            try:
                cur = current_stream(current_device())
            except Exception as exc:
                warn_cannot_audit(op, exc)
                return original(*args, **kwargs)
            next(counter if auditor is owner_auditor else auditor.coverage.counter(op, target))
            if not cur[0] and get_ident() != auditor.main_engine:
                auditor.admit(op, cur[1], cur[0], None, cur[1], cur[0], None, False,
                              counted=True)
            return original(*args, **kwargs)

        return audited

    return registry.patch(owner, name, make)
