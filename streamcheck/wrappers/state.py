"""The process's one patch registry and one gate, shared by every wrapper.

Kept apart from the ``streamcheck.audit`` façade so that wrappers (``launch``, the vLLM
integration) can reach the active auditor without importing the façade that installs them.
"""

from __future__ import annotations

import threading

from streamcheck.core.auditor import Auditor
from streamcheck.wrappers.gate import Gate
from streamcheck.wrappers.registry import PatchRegistry

LOCK = threading.RLock()
REGISTRY = PatchRegistry()
GATE = Gate()


def current_auditor() -> Auditor | None:
    """The auditor of this process, or None when nothing is installed."""
    return GATE.auditor
