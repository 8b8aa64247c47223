"""``scripts/_stats.py``: the interval a benchmark's target is judged by."""

from __future__ import annotations

import pytest

from tests.scripts.script_modules import load_script

stats = load_script("_stats")


def test_each_rounds_own_ratio_with_an_interval_from_six_rounds():
    plain = [100.0] * 6
    audited = [101.0, 102.0, 103.0, 104.0, 105.0, 106.0]
    assert stats.paired_ratio(audited, plain) == (1.035, 1.01, 1.06, 1.01, 1.06)


def test_the_medians_interval_is_the_order_statistics_binomial_one():
    """21 rounds: the 6th and 16th smallest (the binomial(21, 1/2) tails below 2.5 % hold 5
    values each side); 6 rounds: least and most (2 x 1/64 = 3.1 % outside); 5: none."""
    values = [float(v) for v in range(21, 0, -1)]
    assert stats.median_interval(values) == (6.0, 16.0)
    assert stats.median_interval([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == (1.0, 6.0)
    assert stats.median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None


def test_the_target_is_met_only_when_the_whole_interval_is_under_it():
    assert stats.target_verdict([(0.99, 1.02), (1.0, 1.03)], 1.03) == "met"
    assert stats.target_verdict([(0.99, 1.02), (1.04, 1.2)], 1.03) == "NOT met"
    # a median under the target with the interval across it (call 8's 0.9851) shows nothing
    assert stats.target_verdict([(0.95, 1.08)], 1.03).startswith("not shown either way")
    assert stats.target_verdict([(None, None)], 1.03).startswith("not shown either way: too few")


def test_bench_audit_judges_a_row_by_its_interval_and_keeps_each_rounds_timings():
    bench_audit = load_script("bench_audit")
    import streamcheck

    off, on = bench_audit.toggled(lambda: None, 10, 6)
    assert len(off) == len(on) == 6 and streamcheck.current_auditor() is None
    rows = bench_audit.judged("hook x: added ns", (250.0, 200.0, 320.0, 210.0, 290.0), 300)
    assert rows == {"hook x: added ns, 95 % interval": "210.0-290.0",
                    "hook x: added ns: target <= 300": "met"}
    rows = bench_audit.judged("r", stats.paired_ratio([1.05] * 6, [1.0] * 6), 1.02)
    assert rows["r: target <= 1.02"] == "NOT met"


def test_bench_audit_turns_which_run_goes_first_from_round_to_round():
    bench_audit = load_script("bench_audit")
    import streamcheck

    seen: list[bool] = []
    bench_audit.toggled(lambda: seen.append(streamcheck.current_auditor() is not None), 1, 4)
    assert seen == [False, True, True, False, False, True, True, False]
    seen.clear()
    bench_audit.toggled(lambda: seen.append(streamcheck.current_auditor() is not None), 1, 3)
    assert seen[-1] is True and streamcheck.current_auditor() is None  # none left installed
    order: list[str] = []
    plain = bench_audit.contextlib.nullcontext
    times = bench_audit.interleaved_arms(
        [(lambda: order.append("a"), plain), (lambda: order.append("b"), plain),
         (lambda: order.append("c"), plain)], 1, 6)
    # a Williams design: over six rounds each arm in each place twice, and right after each
    # other arm twice
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b",
                     "c", "b", "a", "a", "c", "b", "b", "a", "c"]
    assert [len(t) for t in times] == [6, 6, 6]


def test_bench_audit_times_the_wrapper_with_the_audit_paused_and_restores_it():
    """The floor arm: the installed wrapper with no auditor on the gate passes the call
    through uncounted; the auditor is back on the gate after the arm, an error included."""
    bench_audit = load_script("bench_audit")
    import streamcheck
    from streamcheck import installer
    from streamcheck.wrappers.launches import wrap_stream_method

    class Comm:
        device = 0

        def all_reduce(self, tensor, out=None, stream=None):
            return stream

    class Stream:
        device_index, stream_id, cuda_stream = 0, 5, 0x5000

    aud = streamcheck.install("assert")
    try:
        assert wrap_stream_method(installer._registry, installer._gate, Comm, "all_reduce",
                                  "t.all_reduce", resolve="self.kept", device_expr="self.device",
                                  accessor="", current_of_device=lambda d: (5, 0, 1),
                                  fixed_device=True)
        stream = Stream()
        assert Comm().all_reduce(None, stream=stream) is stream
        with bench_audit.audit_paused():
            assert installer._gate.auditor is None
            assert Comm().all_reduce(None, stream=stream) is stream  # passed through
        assert installer._gate.auditor is aud
        assert aud.coverage.launches_by_op()["t.all_reduce"] == 1  # the paused call uncounted
        with pytest.raises(RuntimeError), bench_audit.audit_paused():
            raise RuntimeError("in the arm")
        assert installer._gate.auditor is aud and streamcheck.current_auditor() is aud
    finally:
        streamcheck.uninstall()


def test_bench_audit_ratio_rows_name_the_medians_the_ratio_and_the_verdict():
    bench_audit = load_script("bench_audit")
    rows = bench_audit.ratio_rows("op", [1000.0] * 6, [1010.0] * 6, 3, 1.02)
    assert rows == {"op unwrapped us": 1.0, "op assert-mode us": 1.01,
                    "op ratio wrapped/unwrapped": 1.01,
                    "op, each round's own ratio, 95 % interval": "1.01-1.01",
                    "op, each round's own ratio: target <= 1.02": "met"}

