"""What the process tests share: whether a process is gone."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def process_gone(pid: int) -> bool:
    """No such process, or one killed and waiting to be reaped (a zombie: it runs nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    return False
