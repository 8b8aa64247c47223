"""The audit paused for a timed run: every wrapper stays installed and reads the gate, which
holds no auditor, so each passes its call straight to the original. What interposing costs
before anything is checked: the floor under the audit's own cost (``bench_audit.py``,
``bench_stream_loop.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from streamcheck import installer


@contextlib.contextmanager
def audit_paused() -> Iterator[None]:
    """The installed audit's gate without its auditor for the block; the auditor back after
    it, an error included."""
    gate = installer._gate
    auditor, gate.auditor = gate.auditor, None
    try:
        yield
    finally:
        gate.auditor = auditor
