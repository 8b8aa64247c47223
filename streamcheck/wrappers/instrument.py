"""Apply one :class:`~streamcheck.wrappers.sites.LaunchSite` to its imported module.

Called by the import watch, with the module object, whenever a target's module is (or already
was) imported while an audit is installed. Every patch goes through the shared registry, so it
is applied once and restored exactly by ``uninstall()``; what became of the target (which
methods were patched, or why none could be) is noted in the auditor's coverage.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from streamcheck.core.coverage import INSTRUMENTED, UNAVAILABLE
from streamcheck.runtime.cuda import StreamReader, stream_reader
from streamcheck.wrappers.launches import wrap_current_stream_call, wrap_stream_method
from streamcheck.wrappers.sites import CURRENT, LaunchSite
from streamcheck.wrappers.state import GATE, LOCK, REGISTRY


def apply_site(site: LaunchSite, module: ModuleType) -> list[str]:
    """Instrument ``site`` in ``module``; returns the methods patched by this call."""
    with LOCK:
        auditor = GATE.auditor
        if auditor is None:
            return []
        try:
            if site.kind == "functions":
                patched = _functions(site, module)
            elif site.kind == "connector-base":
                patched = _connector_base(site, module)
            else:
                patched = _communicator(site, module)
        except _Unavailable as exc:
            auditor.coverage.note_target(site.name, site.module, UNAVAILABLE, detail=str(exc),
                                         source=site.source)
            return []
        auditor.coverage.note_target(site.name, site.module, INSTRUMENTED, patched,
                                     source=site.source)
        return patched


class _Unavailable(Exception):
    """The module is there but the site is not (another version, no CUDA, a typo)."""


def _owner(site: LaunchSite, module: ModuleType) -> type:
    owner = module
    for part in site.owner.split("."):
        owner = getattr(owner, part, None)
        if owner is None:
            raise _Unavailable(f"{site.module} has no {site.owner}")
    if not isinstance(owner, type):
        raise _Unavailable(f"{site.module}.{site.owner} is not a class")
    return owner


def _reader() -> StreamReader:
    reader = stream_reader()
    if reader is None:
        raise _Unavailable("torch has no CUDA in this build (no current-stream reader)")
    return reader


@dataclass(frozen=True)
class _Resolver:
    """How a generated wrapper finds the stream of a ``stream=None`` launch, inline."""

    expr: str | None  # over ``self`` and ``names``; None: the thread's current stream
    names: dict[str, Any]
    label: str


def _resolver(site: LaunchSite) -> _Resolver:
    spec = site.stream
    if spec == CURRENT:
        return _Resolver(None, {}, "the thread's current stream")
    if spec.startswith("self."):  # validated by sites: self.name or self.name()
        return _Resolver(spec, {}, f"{site.owner}.{spec[5:]}")
    module_name, _, attr = spec.partition(":")
    try:
        holder = importlib.import_module(module_name)
    except Exception as exc:
        raise _Unavailable(f"stream resolver {spec}: {type(exc).__name__}: {exc}") from None
    if not hasattr(holder, attr):
        raise _Unavailable(f"stream resolver {spec}: {module_name} has no {attr}")
    # Looked up on the module at every call: a later patch of the accessor (vLLM's, a test's)
    # is what counts.
    return _Resolver(f"_holder.{attr}()", {"_holder": holder}, f"{module_name}.{attr}()")


def _communicator(site: LaunchSite, module: ModuleType) -> list[str]:
    cls = _owner(site, module)
    reader = _reader()
    resolver = _resolver(site)
    present = [m for m in site.methods if callable(getattr(cls, m, None))]
    if not present:
        raise _Unavailable(f"{site.owner} has none of {', '.join(site.methods)}")
    patched, refused = [], []
    for method in present:
        try:
            if wrap_stream_method(REGISTRY, GATE, cls, method, site.op(method),
                                  resolve=resolver.expr, names=resolver.names,
                                  device_expr=site.device, accessor=resolver.label,
                                  current_of_device=reader.current_stream,
                                  current_raw_stream=reader.current_raw_stream,
                                  current_device=reader.current_device,
                                  skip_expr=site.skip, fixed_device=True, target=site.name):
                patched.append(method)
        except ValueError as exc:  # a signature the generated wrapper cannot take
            refused.append(str(exc))
    if refused and not patched:
        raise _Unavailable("; ".join(refused))
    for reason in refused:  # the others are audited: say which are not
        warnings.warn(f"streamcheck: {reason}; its launches are not audited", RuntimeWarning,
                      stacklevel=2)
    return patched


def _functions(site: LaunchSite, module: ModuleType) -> list[str]:
    from streamcheck.wrappers.torch_distributed import wrap_tensor_function

    reader = _reader()
    if site.module == "torch.distributed" and not module.is_available():
        raise _Unavailable("torch.distributed is not available in this build")
    patched = []
    for name in site.methods:
        if callable(getattr(module, name, None)) and wrap_tensor_function(
                REGISTRY, GATE, module, name, site.op(name), reader.current_stream, site.name):
            patched.append(name)
    if not patched and not any(hasattr(module, n) for n in site.methods):
        raise _Unavailable(f"{site.module} has none of {', '.join(site.methods)}")
    return patched


def _connector_base(site: LaunchSite, module: ModuleType) -> list[str]:
    """Every subclass of the base, now and later: ``__init_subclass__`` reports new ones."""
    base = _owner(site, module)
    reader = _reader()
    patched = []
    todo, seen = [base], set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        patched += _connector_class(site, cls, reader)
        todo.extend(cls.__subclasses__())

    def make(_current: Any) -> Any:
        own = base.__dict__.get("__init_subclass__")
        chained = own.__func__ if isinstance(own, classmethod) else None

        def __init_subclass__(cls: type, **kwargs: Any) -> None:
            if chained is not None:
                chained(cls, **kwargs)
            else:
                super(base, cls).__init_subclass__(**kwargs)
            methods = _connector_class(site, cls, reader)
            auditor = GATE.auditor
            if methods and auditor is not None:
                auditor.coverage.note_target(site.name, site.module, INSTRUMENTED, methods,
                                             source=site.source)

        return classmethod(__init_subclass__)

    REGISTRY.patch(base, "__init_subclass__", make)
    return patched


def _connector_class(site: LaunchSite, cls: type, reader: StreamReader) -> list[str]:
    patched = []
    for method in site.methods:
        fn = cls.__dict__.get(method)
        if fn is None or getattr(fn, "__isabstractmethod__", False):
            continue
        if wrap_current_stream_call(REGISTRY, GATE, cls, method,
                                    site.op(method, cls.__name__), reader, site.name):
            patched.append(f"{cls.__name__}.{method}")
    return patched


def describe_site(site: LaunchSite) -> dict[str, Any]:
    """What this Python exposes of ``site``, found the way ``apply_site`` would, patching
    nothing: the module, the class, which listed methods exist and whether each takes a
    ``stream``. For ``streamcheck doctor``: which targets the installed engines offer."""
    row: dict[str, Any] = {"name": site.name, "module": site.module, "methods": [],
                           "stream_param": [], "state": "not installed", "detail": ""}
    try:
        module = importlib.import_module(site.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if site.module == missing or site.module.startswith(missing + "."):
            row["detail"] = f"{missing} not installed"
        else:  # the engine is there but something it imports is not
            row.update(state="import failed", detail=f"needs {missing}, not installed")
        return row
    except Exception as exc:
        row.update(state="import failed", detail=f"{type(exc).__name__}: {exc}"[:200])
        return row
    try:
        holder: Any = _owner(site, module) if site.owner else module
        if site.kind == "communicator":
            _resolver(site)
    except _Unavailable as exc:
        row.update(state="unavailable", detail=str(exc))
        return row
    for name in site.methods:
        fn = getattr(holder, name, None)
        if callable(fn):
            row["methods"].append(name)
            with contextlib.suppress(TypeError, ValueError):
                if "stream" in inspect.signature(fn).parameters:
                    row["stream_param"].append(name)
    if site.kind == "connector-base":
        row["detail"] = "every subclass, defined before or after the audit starts"
    row["state"] = "available" if row["methods"] else "unavailable"
    return row
