"""Where each vLLM version keeps the pieces streamcheck audits, found without importing vLLM early.

vLLM moved ``current_stream()`` between releases and changed how it caches the stream three
times; the wrappers need the module object and attribute name to patch, and the findings need to
know which cache the running version has. Importing this module imports nothing heavy: vLLM is
touched only when a function below is called, so ``streamcheck`` works where vLLM is absent.

Facts, each read from the released wheels' source:

========  ====================================  =============================================
version   ``current_stream`` defined in          cache of "the current stream"
========  ====================================  =============================================
<=0.9.x   ``vllm.utils`` (``utils/__init__.py``)  module-global ``_current_stream``, set by the
                                                 patched ``torch.cuda.set_stream`` of *any*
                                                 thread: one thread's stream leaks to all
0.10-0.13 ``vllm.utils`` / ``vllm.utils.         ``threading.local``; a thread that never set a
          torch_utils`` (0.13)                   stream gets the platform's current stream
                                                 (cuda:0's default stream in a fresh thread)
>=0.14    ``vllm.utils.torch_utils``             ``threading.local``; a thread that never set a
                                                 stream gets a NEW ``torch.cuda.Stream()`` on
                                                 its current device (cuda:0 unless it chose one)
========  ====================================  =============================================

In every version the cache is only updated through the patched ``torch.cuda.set_stream``, so
``torch.accelerator.set_stream`` and ``with torch.Stream(...)`` leave it stale. pynccl binds the
function by name (``from ... import current_stream``): patching the defining module alone does
not reach ``PyNcclCommunicator``; see :func:`bound_copies`.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from importlib import metadata
from types import FunctionType, ModuleType
from typing import Literal

__all__ = [
    "PYNCCL_MODULE",
    "PYNCCL_STREAM_NAME",
    "VLLM_PREPARE_COMMAND",
    "VLLM_STUBS_COMPILED",
    "VLLM_STUBS_MODULE",
    "VLLM_STUBS_OFF",
    "VLLM_STUBS_STUBBED",
    "VLLM_STUBS_SWITCH",
    "VLLM_STUB_FLAG",
    "CacheKind",
    "VllmUnavailable",
    "bound_copies",
    "cache_kind",
    "detect_cache_kind",
    "find_current_stream_accessor",
    "import_vllm_module",
    "parse_version",
    "pynccl_module",
    "register_vllm_stubs",
    "vllm_version",
]

CacheKind = Literal["module-global", "thread-local-default-stream", "thread-local-new-stream"]

# The stand-in contract. A prepared vLLM tree (built by ``python -m tools.vllm_env prepare`` in a
# source checkout; the tool is not shipped) holds vLLM's Python files only, so it ships one more
# module beside them: empty stand-ins for the compiled extensions that vLLM's import path cannot
# do without. Library code (the doctor's probe, the vLLM repro engine) relies on the names below
# and on nothing else of that tool; the tool takes them from here when it writes the module, so
# the two cannot drift apart. A real vLLM install has no such module.

#: The stand-in module's name: importing it registers the stand-ins (``sys.modules``), unless
#: :data:`VLLM_STUBS_SWITCH` turns that off. :func:`register_vllm_stubs` is the one way in.
VLLM_STUBS_MODULE = "streamcheck_vllm_stubs"
#: Its attribute holding the tuple of module names it registers stand-ins for.
VLLM_STUBS_STUBBED = "STUBBED"
#: Its attribute holding the tuple of every compiled module the vLLM wheel ships.
VLLM_STUBS_COMPILED = "COMPILED"
#: Set to ``True`` on every stand-in module, so one can be told from a real extension.
VLLM_STUB_FLAG = "__streamcheck_stub__"
#: Environment variable read when the stand-in module is imported: one of
#: :data:`VLLM_STUBS_OFF` (any case) skips registration.
VLLM_STUBS_SWITCH = "STREAMCHECK_VLLM_STUBS"
VLLM_STUBS_OFF = ("0", "off", "no", "false")
#: How a person builds a prepared tree for one version (append the version).
VLLM_PREPARE_COMMAND = "python -m tools.vllm_env prepare"

PYNCCL_MODULE = "vllm.distributed.device_communicators.pynccl"
# The name under which pynccl holds its own reference to vLLM's current_stream (same in 0.9.2,
# 0.13.0, 0.24.0 and 0.33.0): ``stream = current_stream()`` when a collective gets stream=None.
PYNCCL_STREAM_NAME = "current_stream"

# Modules that have defined ``current_stream``, newest first; the first that has it wins.
_ACCESSOR_MODULES = ("vllm.utils.torch_utils", "vllm.utils")

_INSTALL_HINT = (
    "install it with `pip install 'streamcheck[vllm]'` (or the vLLM release your engine uses); "
    f"in a streamcheck source checkout, `{VLLM_PREPARE_COMMAND} VERSION` builds a "
    "vLLM Python-module tree for CPU tests"
)


class VllmUnavailable(ImportError):
    """vLLM is not importable here; the message says how to get it."""

    def __init__(self, detail: str = "vLLM is not installed") -> None:
        super().__init__(f"{detail}: {_INSTALL_HINT}")


def register_vllm_stubs() -> list[str]:
    """Import a prepared tree's stand-ins before vLLM (nothing in a real install); returns the
    names that are registered stand-ins now."""
    if importlib.util.find_spec(VLLM_STUBS_MODULE) is None:
        return []
    module = importlib.import_module(VLLM_STUBS_MODULE)
    return [name for name in getattr(module, VLLM_STUBS_STUBBED, ()) if name in sys.modules]


def vllm_version() -> str | None:
    """The installed vLLM version from its metadata, or None; never imports vLLM.

    Reading metadata instead of ``vllm.__version__`` keeps this cheap and side-effect free
    (importing vllm patches ``torch.cuda.set_stream`` and resolves the platform).
    """
    try:
        return metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return None


def parse_version(version: str) -> tuple[int, int, int]:
    """Leading ``major.minor.patch`` of a version string ("0.10.1rc2+cu128" -> (0, 10, 1))."""
    m = re.match(r"^\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if not m:
        raise ValueError(f"not a vLLM version: {version!r}")
    return int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)


def cache_kind(version: str) -> CacheKind:
    """How this vLLM version caches the current stream (see the module docstring's table).

    Pre-releases count as their release (0.10.0rc1 -> thread-local), the way vLLM's own
    changelog dates the change.
    """
    v = parse_version(version)
    if v < (0, 10, 0):
        return "module-global"
    if v < (0, 14, 0):
        return "thread-local-default-stream"
    return "thread-local-new-stream"


def _require_vllm() -> str:
    version = vllm_version()
    if version is None:
        raise VllmUnavailable()
    return version


def import_vllm_module(name: str) -> ModuleType:
    """Import a vLLM module, or raise ``VllmUnavailable`` saying which and why.

    Any exception counts, not only ImportError: importing vLLM resolves its platform and can
    fail with other errors on a machine it does not support.
    """
    try:
        return importlib.import_module(name)
    except Exception as exc:
        version = vllm_version()
        why = f"{type(exc).__name__}: {exc}"
        raise VllmUnavailable(
            f"vLLM is not installed ({name}: {why})" if version is None
            else f"vLLM {version} is installed but {name} failed to import ({why})"
        ) from exc


def _has_submodule(name: str) -> bool:
    """True if ``name`` can be found, without executing it (its parents do get imported)."""
    parent, _, _ = name.rpartition(".")
    pkg = import_vllm_module(parent)
    paths = getattr(pkg, "__path__", None)
    if paths is None:
        return False
    from importlib.machinery import PathFinder

    return PathFinder.find_spec(name, list(paths)) is not None


def find_current_stream_accessor() -> tuple[ModuleType, str]:
    """The module object and attribute name that define vLLM's ``current_stream``.

    0.9.2 defines it in ``vllm.utils``; 0.13.0 and later in ``vllm.utils.torch_utils`` (which
    ``vllm.utils`` no longer re-exports in the newest releases). Importing it runs vLLM's own
    ``torch.cuda.set_stream`` patch, exactly as vLLM does at start-up.
    """
    _require_vllm()
    for name in _ACCESSOR_MODULES:
        if name in sys.modules or _has_submodule(name):
            module = import_vllm_module(name)
            fn = module.__dict__.get("current_stream")
            if isinstance(fn, FunctionType) and fn.__module__ == module.__name__:
                return module, "current_stream"
    raise VllmUnavailable(
        f"vLLM {vllm_version()} defines no current_stream in "
        f"{' or '.join(_ACCESSOR_MODULES)}; this version is not supported"
    )


def pynccl_module() -> ModuleType:
    """``vllm.distributed.device_communicators.pynccl`` (defines ``PyNcclCommunicator``).

    It holds its own reference under :data:`PYNCCL_STREAM_NAME`, bound at import time.
    """
    _require_vllm()
    return import_vllm_module(PYNCCL_MODULE)


def bound_copies(fn: object, prefix: str = "vllm") -> list[tuple[ModuleType, str]]:
    """Every (module, name) under ``prefix`` already imported whose global is ``fn``.

    ``from vllm.utils.torch_utils import current_stream`` copies the reference into each
    importing module, so an exact patch (and an exact restore) must visit all of them.
    """
    out = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == prefix or name.startswith(prefix + ".")):
            continue
        for attr, value in list(vars(module).items()):
            if value is fn:
                out.append((module, attr))
    return out


def detect_cache_kind(module: ModuleType) -> CacheKind:
    """Classify the cache from the accessor module's source, for versions not in the table.

    Reads the file rather than calling anything, so it works on CPU for every version.
    """
    import inspect

    source = inspect.getsource(module)
    body = re.search(r"^def current_stream\(.*?(?=^\S)", source, re.M | re.S)
    text = body.group(0) if body else ""
    if "global _current_stream" in text:
        return "module-global"
    new_stream = re.search(r"is_cuda\(\).*?torch\.cuda\.Stream\(\)", text, re.S)
    return "thread-local-new-stream" if new_stream else "thread-local-default-stream"
