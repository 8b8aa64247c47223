"""Instrument a module when it is imported: before or after the audit starts, exactly once.

Engines import their communicators and connectors whenever they like: vLLM's worker imports
``pynccl`` after its general plugins ran, and ``KVConnectorFactory`` imports the connector
class after that. A patch applied only to what is in ``sys.modules`` at install time misses
them. :class:`ImportWatch` runs a callback on a module that is already imported now, and on
any other the moment its import finishes.

The post-import mechanism is ``wrapt``'s (``register_post_import_hook``), the one
OpenTelemetry-style instrumentors and APM agents use: it chains to whatever finder really
loads the module (pytest's assertion rewriter, zipimport, editable installs) instead of
re-implementing the import protocol. wrapt cannot unregister a hook and fires each one once,
so the watch registers one dispatcher per module name while none is pending, and the
dispatcher does nothing unless the watch is armed: after ``uninstall()`` a late import patches
nothing, and a later ``install()`` needs no second hook.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable
from types import ModuleType

import wrapt

ModuleCallback = Callable[[ModuleType], None]


def _ensure_finder() -> None:
    """Put wrapt's finder back if something took it off ``sys.meta_path``.

    wrapt inserts its finder once per process; code that snapshots and restores
    ``sys.meta_path`` (pytest's in-process ``pytester`` does) can remove it, and every hook
    registered afterwards would then never fire.
    """
    finder = wrapt.importer.ImportHookFinder
    if not any(isinstance(f, finder) for f in sys.meta_path):
        sys.meta_path.insert(0, finder())


class ImportWatch:
    """Callbacks by module name, run once per arming for each imported module."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._callbacks: dict[str, list[ModuleCallback]] = {}
        self._pending: set[str] = set()  # names with a wrapt hook not yet fired
        self._armed = False

    def watch(self, name: str, callback: ModuleCallback) -> None:
        """Run ``callback(module)`` now if ``name`` is imported, else right after its import."""
        with self._lock:
            self._armed = True
            self._callbacks.setdefault(name, []).append(callback)
            module = sys.modules.get(name)
            if module is None and name not in self._pending:
                self._pending.add(name)
                wrapt.register_post_import_hook(self._dispatch, name)
                _ensure_finder()
        if module is not None:
            self._run(callback, module)

    def disarm(self) -> None:
        """Forget every callback; hooks still pending in wrapt become no-ops."""
        with self._lock:
            self._armed = False
            self._callbacks.clear()

    def _dispatch(self, module: ModuleType) -> None:
        name = module.__name__
        with self._lock:
            self._pending.discard(name)
            callbacks = list(self._callbacks.get(name, ())) if self._armed else []
        for callback in callbacks:
            self._run(callback, module)

    @staticmethod
    def _run(callback: ModuleCallback, module: ModuleType) -> None:
        # An exception here would fail the engine's own import: report it and go on unaudited.
        try:
            callback(module)
        except Exception as exc:
            warnings.warn(f"streamcheck could not instrument {module.__name__}: "
                          f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
