"""The switch every installed wrapper reads: the active auditor, or None once uninstalled.

Wrappers that someone else wrapped in turn (a legacy cache patching ``set_stream`` after us)
cannot always be removed; reading the gate makes them pass straight through instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamcheck.core.auditor import Auditor


@dataclass(slots=True)
class Gate:
    """Slotted: the compiled hooks read ``auditor`` at its offset in the object, on every
    call (``gate_auditor`` in streamcheck/_speedups.c), not through a generic lookup."""

    auditor: Auditor | None = None
