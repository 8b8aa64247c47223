"""The switch every installed wrapper reads: the active auditor, or None once uninstalled.

Wrappers that someone else wrapped in turn (a legacy cache patching ``set_stream`` after us)
cannot always be removed; reading the gate makes them pass straight through instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamcheck.core.auditor import Auditor


@dataclass(slots=True, weakref_slot=True, eq=False)  # hashed by identity: followed
class Gate:
    """Slotted: the compiled hooks read ``auditor`` at its offset in the object, on every
    call (``gate_auditor`` in streamcheck/_speedups.c), not through a generic lookup.

    ``main_engine`` mirrors ``mirrors.main_engine`` (the ident of the main thread while it is
    an engine thread): :meth:`open` makes the gate follow the thread-role table that keeps the
    auditor's, so the compiled launch checks read it at its offset too (``main_engine_of``),
    where the auditor's own attribute costs a lookup in its type and then in its instance. An
    auditor the gate does not mirror (set on ``auditor`` directly) is read generically."""

    auditor: Auditor | None = None
    main_engine: int | None = None
    mirrors: Auditor | None = None

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
