"""``scripts/_ranks.py``: the GPU scripts' rank processes, on the CPU with stand-in bodies."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from _ranks import run_ranks

from tests.scripts import rank_targets


def test_results_of_every_rank_come_back():
    results = run_ranks(rank_targets.both_answer, 2, (), expected=2, timeout=60, grace=5)
    assert sorted(r["rank"] for r in results) == [0, 1]


def test_a_rank_that_dies_ends_the_wait_at_once():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"\(1, 1\)"):
        run_ranks(rank_targets.one_rank_dies, 2, (), expected=2, timeout=120, grace=5)
    assert time.monotonic() - start < 25  # not the 120 s timeout, nor rank 0's 30 s sleep
