"""``scripts/_cores.py``: the ``--core`` option the hook benchmarks share. Each times both
cores by default, or the one named; a core that is not built stops the run, before any
timing, with the reason."""

from __future__ import annotations

import sys

import pytest

from tests.scripts.script_modules import load_script

cores = load_script("_cores")


@pytest.mark.parametrize("built", [True, False])
def test_both_cores_by_default_the_compiled_first_where_built(monkeypatch, built):
    monkeypatch.setattr(cores.speedups, "built", lambda: built)
    assert cores.chosen_cores("both", "bench") == (["compiled", "python"] if built
                                                   else ["python"])
    assert cores.chosen_cores("python", "bench") == ["python"]


def test_a_core_not_built_stops_with_the_script_and_the_reason(monkeypatch):
    monkeypatch.setattr(cores.speedups, "built", lambda: False)
    with pytest.raises(SystemExit, match=r"bench_x: --core compiled: .* not built here"):
        cores.chosen_cores("compiled", "bench_x")
    monkeypatch.setattr(cores.speedups, "built", lambda: True)
    assert cores.chosen_cores("compiled", "bench_x") == ["compiled"]


def test_bench_audit_takes_core_and_checks_it_before_anything_runs(monkeypatch, capsys):
    """``bench_audit.py --core compiled`` where the hooks are not built stops at once, where a
    run asking for what is there goes on (to its GPU check, on a machine without one); an
    unknown core is the parser's error."""
    bench = load_script("bench_audit")
    monkeypatch.setattr(cores.speedups, "built", lambda: False)
    monkeypatch.setattr(sys, "argv", ["bench_audit.py", "--core", "compiled"])
    with pytest.raises(SystemExit, match="bench_audit: --core compiled"):
        bench.main()
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["bench_audit.py", "--core", "python"])
    assert bench.main() == 2
    assert "needs a CUDA GPU" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["bench_audit.py", "--core", "neither"])
    with pytest.raises(SystemExit) as stopped:
        bench.main()
    assert stopped.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
