"""Which threads are engine threads (compute + collectives) and which are helpers.

Rules such as ``default-stream-in-worker`` need to know whose stream is "the compute stream".
By default the process's main thread is the engine thread; simulated ranks (threads in one
process) and engines that compute outside the main thread declare theirs.

A role belongs to a thread, not to its ident: the runtime hands a finished thread's ident to
the next thread it starts, and a helper must not inherit an engine's role that way. Each role
is kept with its thread and is void once that thread has ended.
"""

from __future__ import annotations

import threading

ENGINE = "engine"
CONNECTOR = "connector"

# ident -> (role, the thread it was declared for; None when it was not known then)
_roles: dict[int, tuple[str, threading.Thread | None]] = {}
_lock = threading.Lock()


def declare_thread_role(role: str, ident: int | None = None) -> None:
    """Name the role of a thread (the calling thread when ``ident`` is None)."""
    if role not in (ENGINE, CONNECTOR) and not role:
        raise ValueError(f"thread role must be a non-empty name such as {ENGINE!r}")
    if ident is None:
        ident, thread = threading.get_ident(), threading.current_thread()
    else:
        thread = threading._active.get(ident)  # type: ignore[attr-defined]
    with _lock:
        _roles[ident] = (role, thread)


def forget_thread_role(ident: int | None = None) -> None:
    with _lock:
        _roles.pop(threading.get_ident() if ident is None else ident, None)


def declared_role(ident: int) -> str | None:
    """The role declared for the thread now running as ``ident`` (None: none, or it was
    declared for a thread that has ended)."""
    entry = _roles.get(ident)
    if entry is None:
        return None
    role, thread = entry
    if thread is not None and not thread.is_alive():
        with _lock:
            if _roles.get(ident) is entry:
                del _roles[ident]
        return None
    return role


def engine_declared() -> bool:
    """Whether a live thread was declared an engine thread."""
    return any(declared_role(ident) == ENGINE for ident in list(_roles))


def role_of(ident: int) -> str:
    role = declared_role(ident)
    if role is not None:
        return role
    main = threading.main_thread().ident
    if ident == main and not engine_declared():
        return ENGINE
    return ""


def engine_threads() -> list[int]:
    declared = [ident for ident in list(_roles) if declared_role(ident) == ENGINE]
    if declared:
        return declared
    main = threading.main_thread().ident
    return [main] if main is not None else []
