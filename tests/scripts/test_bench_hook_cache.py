"""``scripts/bench_hook_cache.py`` on a small budget: the hook it times is the one the audit
installs, it records what a switch records, and the core choice is left as it was."""

from __future__ import annotations

import pytest

from tests.scripts.script_modules import load_script

bench = load_script("bench_hook_cache")


def test_the_timed_hook_records_each_switch_and_leaves_the_core_choice_alone(monkeypatch):
    monkeypatch.setattr(bench.provenance, "LOG_LENGTH", 32)
    before = bench.speedups.active()
    logs = {"compiled": "SwitchLog", "compiled, tuples": "deque", "python": "deque"}
    for name in (list(logs) if bench.speedups.built() else ["python"]):
        gate, hook = bench.hooked(name)
        stream = bench.StreamLike()
        assert hook(stream) == id(stream)  # the stand-in's answer passes through
        log = gate.auditor.book._log
        assert log[-1][0] is stream  # the switch is in the book
        assert type(log).__name__ == logs[name]
        assert bench.speedups.active() is before
        assert bench.provenance.make_switch_log is (
            bench.provenance.deque_log if before is None else before.SwitchLog)


def test_a_measurement_pairs_its_rounds_and_says_what_it_swept(monkeypatch):
    monkeypatch.setattr(bench.provenance, "LOG_LENGTH", 32)
    (row,) = bench.measure(["python"], 64, rounds=6, groups=3)
    assert row["hook"] == "python" and row["sweep_kib"] == 64
    assert isinstance(row["added_ns"], float) and len(row["interval"]) == 2
    assert row["interval"][0] is not None and row["least"] <= row["added_ns"] <= row["most"]
    assert bench.Sweeper(0)() == 0 and bench.Sweeper(1)() == 0  # zeros, touched or not


def test_the_slots_are_compared_with_the_tuples_in_the_same_rounds(monkeypatch):
    if not bench.speedups.built():
        pytest.skip("streamcheck._speedups is not built here")
    monkeypatch.setattr(bench.provenance, "LOG_LENGTH", 32)
    rows = bench.measure(["compiled", "compiled, tuples"], 0, rounds=6, groups=3)
    assert [r["hook"] for r in rows] == ["compiled", "compiled, tuples"]
    assert isinstance(rows[0]["saved_over_tuples_ns"], float)
    assert "saved_over_tuples_ns" not in rows[1]


def test_the_one_object_hook_frees_no_stream_and_is_compared_in_the_same_rounds(monkeypatch):
    """``compiled, one stream object`` switches to ``KEPT`` every time, so its full log frees
    no stream object where the plain compiled hook's frees one a switch; the compiled row
    carries the difference."""
    if not bench.speedups.built():
        pytest.skip("streamcheck._speedups is not built here")
    monkeypatch.setattr(bench.provenance, "LOG_LENGTH", 32)
    rows = bench.measure(["compiled", bench.ONE_STREAM], 0, rounds=6, groups=3)
    assert [r["hook"] for r in rows] == ["compiled", bench.ONE_STREAM]
    assert isinstance(rows[0]["freeing_old_stream_ns"], float)
    assert "freeing_old_stream_ns" not in rows[1]
    seen: list[object] = []
    bench.ns_per_call(seen.append, bench.Sweeper(0), 2, fresh=False)
    assert seen == [bench.KEPT] * (2 * bench.CALLS)
    seen.clear()
    bench.ns_per_call(seen.append, bench.Sweeper(0), 2)
    assert len({id(s) for s in seen}) == len(seen) and bench.KEPT not in seen


def test_the_handoff_path_declares_through_the_installed_audit_and_uninstalls(monkeypatch):
    """``--path handoff`` times the real ``streamcheck.handoff`` with the audit installed (a
    write kept for the tensor-like object on the given stream) and leaves nothing installed."""
    from streamcheck import installer

    kept = []
    real = bench.audited_handoff

    def counted(stream):
        made = real(stream)
        kept.append((made.tensor, made.access, made.stream.key))
        return made

    monkeypatch.setattr(bench, "audited_handoff", counted)
    (row,) = bench.measure_handoff(64, rounds=6, groups=2)
    assert row["hook"].startswith("handoff (") and row["sweep_kib"] == 64
    assert row["interval"][0] is not None and row["least"] <= row["added_ns"] <= row["most"]
    assert len(kept) == 6 * 2 * bench.CALLS
    assert set(kept) == {((0, 0x7F0000), "write", (0, 3))}
    assert installer.current_auditor() is None
