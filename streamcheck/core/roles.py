"""Which threads are engine threads (compute + collectives) and which are helpers.

Rules such as ``default-stream-in-worker`` need to know whose stream is "the compute stream".
By default the process's main thread is the engine thread; simulated ranks (threads in one
process) and engines that compute outside the main thread declare theirs.

The roles are state of one :class:`ThreadRoles` table, which the auditor owns (the process's
table is kept by the installer, so a role declared before the audit starts still counts);
nothing here is a module global. :meth:`ThreadRoles.is_engine` is the one engine-thread test:
the rules (through ``role_of``), ``Auditor.admit`` and the hooks all answer with it. The hooks'
inline fast paths compare the calling thread with :attr:`ThreadRoles.main_engine`, a plain
attribute this table keeps in step (on the objects that :meth:`ThreadRoles.follow` it, too).

A role belongs to a thread, not to its ident: the runtime hands a finished thread's ident to
the next thread it starts, and a helper must not inherit an engine's role that way. Each role
is kept with its thread and is void once that thread has ended.
"""

from __future__ import annotations

import threading
import weakref

ENGINE = "engine"
CONNECTOR = "connector"


def main_thread_role(ident: int) -> str:
    """The role of ``ident`` in a process that declared none: the main thread is the engine."""
    return ENGINE if ident == threading.main_thread().ident else ""


def main_thread_only() -> list[int]:
    """The engine threads of a process that declared none: its main thread."""
    main = threading.main_thread().ident
    return [main] if main is not None else []


class ThreadRoles:
    """The declared roles of one process's threads."""

    def __init__(self) -> None:
        # ident -> (role, the thread it was declared for; None when it was not known then)
        self._roles: dict[int, tuple[str, threading.Thread | None]] = {}
        self._lock = threading.Lock()
        # serialises computing and publishing main_engine: the last writer to publish reads
        # the table after every write that came before it
        self._publish = threading.Lock()
        self._followers: weakref.WeakSet[object] = weakref.WeakSet()
        #: The main thread's ident while it is an engine thread, else None: the one thread the
        #: hooks' fast paths let through on a comparison. Never a stale ident: it changes only
        #: when a declaration does (a stale None only sends the main thread the slow way).
        self.main_engine: int | None = threading.main_thread().ident
        #: Changes with every change to the table (a declaration, a role forgotten, a role
        #: found void): a helper thread's role is the same while this is, so a compiled
        #: thread record made at one version may be reused at it (``Declarer`` in
        #: streamcheck/_declare.c; the main thread's also turns on other threads' lives).
        self.version = 0

    # ---- writing -------------------------------------------------------------------------

    def declare(self, role: str, ident: int | None = None) -> None:
        """Name the role of a thread (the calling thread when ``ident`` is None)."""
        if not role:
            raise ValueError(f"thread role must be a non-empty name such as {ENGINE!r}")
        if ident is None:
            ident, thread = threading.get_ident(), threading.current_thread()
        else:
            thread = threading._active.get(ident)  # type: ignore[attr-defined]
        with self._lock:
            self._roles[ident] = (role, thread)
        self._changed()

    def forget(self, ident: int | None = None) -> None:
        with self._lock:
            self._roles.pop(threading.get_ident() if ident is None else ident, None)
        self._changed()

    def follow(self, follower: object) -> None:
        """Keep ``follower.main_engine`` equal to :attr:`main_engine` (an auditor, whose hooks
        read it as a plain attribute)."""
        self._followers.add(follower)
        follower.main_engine = self.main_engine  # type: ignore[attr-defined]

    def unfollow(self, follower: object) -> None:
        """Stop keeping ``follower.main_engine`` (it mirrors another table now, or none)."""
        self._followers.discard(follower)

    def _changed(self) -> None:
        with self._publish:
            self.version += 1
            main = threading.main_thread().ident
            engine = main is not None and self._is_engine(main)
            self.main_engine = main if engine else None
            for follower in list(self._followers):
                follower.main_engine = self.main_engine  # type: ignore[attr-defined]

    # ---- reading -------------------------------------------------------------------------

    def declared_role(self, ident: int) -> str | None:
        """The role declared for the thread now running as ``ident`` (None: none, or it was
        declared for a thread that has ended)."""
        entry = self._roles.get(ident)
        if entry is None:
            return None
        role, thread = entry
        if thread is not None and not thread.is_alive():
            with self._lock:
                if self._roles.get(ident) is entry:
                    del self._roles[ident]
                    self.version += 1
            return None
        return role

    def engine_declared(self) -> bool:
        """Whether a live thread was declared an engine thread."""
        return any(self.declared_role(ident) == ENGINE for ident in list(self._roles))

    def _is_engine(self, ident: int) -> bool:
        role = self.declared_role(ident)
        if role is not None:
            return role == ENGINE
        return ident == threading.main_thread().ident and not self.engine_declared()

    def is_engine(self, ident: int) -> bool:
        """The one engine-thread test: a declared engine thread, else the main thread while no
        live thread is declared one."""
        engine = self._is_engine(ident)
        if engine and ident != self.main_engine and ident == threading.main_thread().ident:
            self._changed()  # the declared engines ended: the main thread is the engine again
        return engine

    def role_of(self, ident: int) -> str:
        if ident == self.main_engine:  # kept in step with every declaration: an engine
            return ENGINE
        role = self.declared_role(ident)
        if role is not None:
            return role
        return ENGINE if self.is_engine(ident) else ""

    def engine_threads(self) -> list[int]:
        declared = [ident for ident in list(self._roles) if self.declared_role(ident) == ENGINE]
        return declared if declared else main_thread_only()
