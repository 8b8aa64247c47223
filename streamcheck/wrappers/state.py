"""The process's one patch registry, one gate and one table of thread roles, shared by every
wrapper and handed to every auditor the installer builds.

Kept apart from :mod:`streamcheck.installer` so that wrappers (``launch``, the vLLM
integration) can reach the active auditor without importing the façade that installs them.
"""

from __future__ import annotations

import threading

from streamcheck.core.auditor import Auditor
from streamcheck.core.roles import ThreadRoles
from streamcheck.wrappers.gate import Gate
from streamcheck.wrappers.registry import PatchRegistry

LOCK = threading.RLock()
REGISTRY = PatchRegistry()
GATE = Gate()
ROLES = ThreadRoles()


def declare_thread_role(role: str, ident: int | None = None) -> None:
    """Name the role of a thread (the calling thread when ``ident`` is None), e.g.
    ``streamcheck.ENGINE`` for a thread that computes outside the main thread. Kept for the
    process, so it counts for an audit started before or after."""
    ROLES.declare(role, ident)


def current_auditor() -> Auditor | None:
    """The auditor of this process, or None when nothing is installed."""
    return GATE.auditor
