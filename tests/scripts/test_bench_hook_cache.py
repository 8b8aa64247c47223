"""``scripts/bench_hook_cache.py`` on a small budget: the hook it times is the one the audit
installs, it records what a switch records, and the core choice is left as it was."""

from __future__ import annotations

from tests.scripts.script_modules import load_script

bench = load_script("bench_hook_cache")


def test_the_timed_hook_records_each_switch_and_leaves_the_core_choice_alone(monkeypatch):
    monkeypatch.setattr(bench.provenance, "LOG_LENGTH", 32)
    before = bench.speedups.active()
    for core in (["compiled", "python"] if bench.speedups.built() else ["python"]):
        gate = bench.Gate(bench.Auditor(bench.Mode.RECORD))
        hook = bench.hooked(core, gate)
        stream = bench.StreamLike()
        assert hook(stream) == id(stream)  # the stand-in's answer passes through
        assert gate.auditor.book._log[-1][0] is stream  # the switch is in the book
        assert bench.speedups.active() is before


def test_a_measurement_pairs_its_rounds_and_says_what_it_swept(monkeypatch):
    monkeypatch.setattr(bench.provenance, "LOG_LENGTH", 32)
    row = bench.measure("python", 64, rounds=6, groups=3)
    assert row["core"] == "python" and row["sweep_kib"] == 64
    assert isinstance(row["added_ns"], float) and len(row["interval"]) == 2
    assert row["interval"][0] is not None and row["least"] <= row["added_ns"] <= row["most"]
    assert bench.Sweeper(0)() == 0 and bench.Sweeper(1)() == 0  # zeros, touched or not
