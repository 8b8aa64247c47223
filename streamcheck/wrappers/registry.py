"""One registry installs and uninstalls every patch, and restores exactly what was there."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_MISSING = object()


@dataclass
class _Applied:
    owner: Any
    name: str
    original: Any  # the raw attribute from the owner's __dict__ (or _MISSING)
    replacement: Any


class PatchRegistry:
    """Applies ``owner.name = make(original)`` once per (owner, name) and undoes it in reverse."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._applied: list[_Applied] = []

    def patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> bool:
        """Patch unless already patched by this registry; returns whether it patched now."""
        with self._lock:
            if any(a.owner is owner and a.name == name for a in self._applied):
                return False
            raw = owner.__dict__.get(name, _MISSING) if hasattr(owner, "__dict__") else _MISSING
            current = getattr(owner, name)
            replacement = make(current)
            setattr(owner, name, replacement)
            self._applied.append(_Applied(owner, name, raw, replacement))
            return True

    def original(self, owner: Any, name: str) -> Any:
        """``owner.__dict__[name]`` as it was before this registry patched it (as it is now,
        if it did not), or None where the owner has no such entry."""
        with self._lock:
            for a in self._applied:
                if a.owner is owner and a.name == name:
                    return None if a.original is _MISSING else a.original
            return owner.__dict__.get(name) if hasattr(owner, "__dict__") else None

    def restore_all(self) -> None:
        """Undo every patch, newest first. A patch someone replaced since is left alone."""
        with self._lock:
            while self._applied:
                self._undo(self._applied.pop())

    def restore(self, owner: Any, names: tuple[str, ...]) -> int:
        """Undo the patches of ``owner.name`` for each of ``names``; returns how many."""
        with self._lock:
            mine = [a for a in self._applied if a.owner is owner and a.name in names]
            for a in reversed(mine):
                self._applied.remove(a)
                self._undo(a)
            return len(mine)

    @staticmethod
    def _undo(a: _Applied) -> None:
        now = a.owner.__dict__.get(a.name, _MISSING) if hasattr(a.owner, "__dict__") \
            else getattr(a.owner, a.name, _MISSING)
        if now is not a.replacement and getattr(a.owner, a.name, None) is not a.replacement:
            warnings.warn(
                f"streamcheck: {a.owner!r}.{a.name} was replaced after streamcheck "
                "patched it; leaving the newer value in place",
                RuntimeWarning, stacklevel=3,
            )
            return
        if a.original is _MISSING:
            delattr(a.owner, a.name)
        else:
            setattr(a.owner, a.name, a.original)

    def __len__(self) -> int:
        return len(self._applied)
