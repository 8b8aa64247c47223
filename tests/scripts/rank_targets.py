"""Rank bodies for ``test_ranks.py`` (a module of their own: spawned children import them)."""

from __future__ import annotations

import time
from typing import Any


def one_rank_dies(rank: int, world: int, out: Any) -> None:
    if rank == 1:
        raise RuntimeError("rank 1 fails at once")
    time.sleep(30)  # rank 0 waits for a peer that will never come (a barrier, say)
    out.put({"rank": rank})


def both_answer(rank: int, world: int, out: Any) -> None:
    out.put({"rank": rank})
