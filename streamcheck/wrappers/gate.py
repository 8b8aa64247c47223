"""The switch every installed wrapper reads: the active auditor, or None once uninstalled.

Wrappers that someone else wrapped in turn (a legacy cache patching ``set_stream`` after us)
cannot always be removed; reading the gate makes them pass straight through instead, checking
and counting nothing (a communicator's compiled launch wrapper still resolves a ``stream=None``
launch's stream and hands it to the method, as the method would have resolved it itself).
"""

from __future__ import annotations

from streamcheck.core.auditor import Auditor


class Gate:
    """Slotted: the compiled hooks read ``auditor`` at its offset in the object, on every
    call (``gate_auditor`` in streamcheck/_speedups.c), not through a generic lookup.

    ``main_engine`` mirrors ``mirrors.main_engine`` (the ident of the main thread while it is
    an engine thread): :meth:`open` makes the gate follow the thread-role table that keeps the
    auditor's, so the compiled launch checks read it at its offset too (``main_engine_of``),
    where the auditor's own attribute costs a lookup in its type and then in its instance. An
    auditor the gate does not mirror (set on ``auditor`` directly) is read generically.
    Written out rather than a slotted dataclass: the table follows it by a weak reference,
    and a dataclass's ``weakref_slot`` needs Python 3.11."""

    __slots__ = ("__weakref__", "auditor", "main_engine", "mirrors")

    def __init__(self, auditor: Auditor | None = None) -> None:
        self.auditor: Auditor | None = auditor
        self.main_engine: int | None = None
        self.mirrors: Auditor | None = None

    def __repr__(self) -> str:
        return f"Gate(auditor={self.auditor!r}, main_engine={self.main_engine!r})"

    def open(self, auditor: Auditor) -> None:
        """Audit for ``auditor`` from now on, its main engine thread mirrored here."""
        self.close()
        self.auditor = auditor
        auditor.roles.follow(self)  # main_engine written now and at every change of roles
        self.mirrors = auditor

    def close(self) -> None:
        """Audit nothing: every hook passes straight through."""
        mirrored, self.mirrors = self.mirrors, None
        self.auditor = None
        if mirrored is not None:
            mirrored.roles.unfollow(self)
