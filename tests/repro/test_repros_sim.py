"""Every repro variant matches its expectation on the simulator (the CI regression suite)."""

from __future__ import annotations

import pytest

from streamcheck.repro.discover import all_repros, load
from streamcheck.repro.runner import group_pids, run_variant

REPROS = all_repros()


def test_builtin_repros_present():
    names = {r.name for r in REPROS}
    assert {"repro_global_stream_leak_nan", "repro_global_stream_leak_error400"} <= names


@pytest.mark.parametrize("variant", ["buggy", "fixed", "guarded"])
@pytest.mark.parametrize("repro", REPROS, ids=lambda r: r.name)
def test_variant_matches_on_sim(repro, variant, tmp_path):
    spec = load(repro.path).SPEC
    world = max(spec.min_gpus, min(2, spec.max_world))
    result = run_variant(repro, variant, "sim", world, None, tmp_path)
    assert result.verdict == "pass", (result.observed, result.reason, result.stderr)


def test_hung_rank_is_dumped_and_killed(tmp_path):
    repro = next(r for r in REPROS if r.name == "repro_global_stream_leak_error400")
    result = run_variant(repro, "buggy", "sim", 2, 8.0, tmp_path)
    assert "hang" in result.observed
    assert result.dumps, "the hung process must be dumped"
    text = "\n".join(result.dumps.values())
    assert "all_reduce" in text or "faulthandler" in text or "py-spy" in text
    for pid in map(int, result.dumps):
        assert pid not in group_pids(pid), f"process {pid} survived the run"
