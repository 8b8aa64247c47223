"""Static scan for the current-stream-leak hazard family (``streamcheck scan``).

Finds, without importing or running anything, code that keeps "the current stream" in a
module global (vLLM <= 0.9.2 and its copies), helper threads that switch streams beside such a
cache, create streams before choosing their device, or use the legacy default stream.

Public API: :func:`scan_paths`, :func:`resolve_targets`, the records in :mod:`.model`, the
rule table :data:`RULES`, and the renderers in :mod:`.output`.
"""

from streamcheck.scan.engine import scan_paths
from streamcheck.scan.model import ScanError, ScanFinding, ScanResult
from streamcheck.scan.resolve import ScanTargetError, resolve_targets
from streamcheck.scan.rules import RULES, UnknownRuleError

__all__ = [
    "RULES",
    "ScanError",
    "ScanFinding",
    "ScanResult",
    "ScanTargetError",
    "UnknownRuleError",
    "resolve_targets",
    "scan_paths",
]
