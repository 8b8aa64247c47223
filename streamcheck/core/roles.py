"""Which threads are engine threads (compute + collectives) and which are helpers.

Rules such as ``default-stream-in-worker`` need to know whose stream is "the compute stream".
By default the process's main thread is the engine thread; simulated ranks (threads in one
process) and engines that compute outside the main thread declare theirs.
"""

from __future__ import annotations

import threading

ENGINE = "engine"
CONNECTOR = "connector"

_roles: dict[int, str] = {}
_lock = threading.Lock()


def declare_thread_role(role: str, ident: int | None = None) -> None:
    """Name the role of a thread (the calling thread when ``ident`` is None)."""
    if role not in (ENGINE, CONNECTOR) and not role:
        raise ValueError(f"thread role must be a non-empty name such as {ENGINE!r}")
    with _lock:
        _roles[threading.get_ident() if ident is None else ident] = role


def forget_thread_role(ident: int | None = None) -> None:
    with _lock:
        _roles.pop(threading.get_ident() if ident is None else ident, None)


def role_of(ident: int) -> str:
    role = _roles.get(ident)
    if role is not None:
        return role
    main = threading.main_thread().ident
    if ident == main and ENGINE not in _roles.values():
        return ENGINE
    return ""


def engine_threads() -> list[int]:
    declared = [ident for ident, role in _roles.items() if role == ENGINE]
    if declared:
        return declared
    main = threading.main_thread().ident
    return [main] if main is not None else []
