"""Every repro variant matches its expectation on the simulator (the CI regression suite)."""

from __future__ import annotations

import shutil

import pytest

from streamcheck.repro.discover import all_repros, load
from streamcheck.repro.runner import run_variant
from streamcheck.runtime.procgroup import group_pids

REPROS = all_repros()


def test_builtin_repros_present():
    names = {r.name for r in REPROS}
    assert {"repro_global_stream_leak_nan", "repro_global_stream_leak_error400"} <= names


def test_a_users_repros_package_does_not_hide_the_builtin_ones(tmp_path, monkeypatch):
    """A project with its own ``repros/`` on ``sys.path`` still sees every built-in repro."""
    (tmp_path / "repros").mkdir()
    (tmp_path / "repros" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert {r.name for r in all_repros()} == {r.name for r in REPROS}


@pytest.mark.parametrize("variant", ["buggy", "fixed", "guarded"])
@pytest.mark.parametrize("repro", REPROS, ids=lambda r: r.name)
def test_variant_matches_on_sim(repro, variant, tmp_path):
    spec = load(repro.path).SPEC
    world = max(spec.min_gpus, min(2, spec.max_world))
    result = run_variant(repro, variant, "sim", world, None, tmp_path, spec=spec)
    assert result.verdict == "pass", (result.observed, result.reason, result.stderr)


def test_hung_rank_is_dumped_and_killed(tmp_path):
    """Rank 1 fails its launch; rank 0 is left inside its all-reduce, as NCCL leaves a peer.

    The spec's own time limit is used: the runner must notice the hang from the failed rank's
    record plus the grace period, not from a limit short enough to cut start-up.
    """
    repro = next(r for r in REPROS if r.name == "repro_global_stream_leak_error400")
    result = run_variant(repro, "buggy", "sim", 2, None, tmp_path)
    assert "rank(s) 0 stuck until killed" in result.observed, result.observed
    assert result.dumps, "the hung process must be dumped"
    if shutil.which("py-spy"):
        text = "\n".join(result.dumps.values())
    else:  # faulthandler writes the stacks into the variant's own output
        text = result.stderr.get("variant.stderr", "")
    assert "all_reduce" in text, text
    for pid in map(int, result.dumps):
        assert pid not in group_pids(pid), f"process {pid} survived the run"


def test_start_up_cut_by_the_time_limit_is_not_a_hang(tmp_path):
    """A limit too short to even start the ranks must fail the variant, never pass as a hang."""
    repro = next(r for r in REPROS if r.name == "repro_global_stream_leak_error400")
    result = run_variant(repro, "buggy", "sim", 2, 0.05, tmp_path)
    assert result.verdict == "fail"
    assert "never started" in result.observed and "hang" not in result.observed
    assert "raise --timeout" in result.reason
