"""``scripts/bench_stream_loop.py``'s state ablation (the loop itself needs a GPU): each variant
runs with exactly the state it names changed, and everything is put back afterwards."""

from __future__ import annotations

import gc
import sys
from collections import Counter
from types import SimpleNamespace

import pytest

from streamcheck.core import provenance
from tests.scripts.script_modules import load_script

bench = load_script("bench_stream_loop")


def test_the_state_variants_change_what_they_name_and_restore_it():
    seen = []
    entry = SimpleNamespace(finding=SimpleNamespace(rule_id="unsynced-handoff"))

    def audited_vs_not(parts, mode):
        bench.speedups.use("auto")  # as each round's install does, before making the book
        tuples = provenance.make_switch_log is provenance.deque_log
        seen.append((provenance.LOG_LENGTH, gc.get_freeze_count() > frozen, tuples,
                     sys.getswitchinterval() != interval, mode, parts))
        return 1.0 + len(seen) / 100, 100.0, [entry], 0

    kept, frozen, interval = provenance.LOG_LENGTH, gc.get_freeze_count(), sys.getswitchinterval()
    compiled = bench.speedups.active() is not None
    findings: list[str] = []
    out = bench.state_ablation(audited_vs_not, findings)
    variants = ["as_shipped_again", "short_switch_log", *(["tuple_switch_log"] * compiled),
                "gc_frozen", "short_gil_switch"]
    assert out == {key: value for n, name in enumerate(variants, 1) for key, value in
                   ((name, 1.0 + n / 100), (f"{name}_unaudited_us", 100.0))}
    # the control first, as shipped; then each variant with only its own state changed
    shipped = not compiled  # the shipped log is a deque of tuples only without the build
    assert [s[:5] for s in seen] == [
        (kept, False, shipped, False, "assert"), (64, False, shipped, False, "assert"),
        *([(kept, False, True, False, "assert")] * compiled),
        (kept, True, shipped, False, "assert"), (kept, False, shipped, True, "assert")]
    assert all(s[5] == frozenset(bench.PARTS) for s in seen)  # the whole loop each time
    assert findings == ["unsynced-handoff"] * len(variants)  # what a variant finds is kept
    assert (provenance.LOG_LENGTH, gc.get_freeze_count(), sys.getswitchinterval()) == (
        kept, frozen, interval)
    bench.speedups.use("auto")
    assert (provenance.make_switch_log is provenance.deque_log) is shipped


def test_each_rounds_own_ratio_is_paired_with_its_own_unaudited_run():
    """A host that slows down over the run moves both runs of a round: the paired ratios stay
    put where the ratio of the medians would not."""
    plain = [100.0, 200.0, 400.0]
    audited = [110.0, 204.0, 480.0]
    assert bench.paired_ratio(audited, plain) == (1.1, 1.02, 1.2, None, None)  # 3 rounds


@pytest.mark.parametrize("count", [2, 3, 4, 5])
def test_each_arm_takes_each_place_and_follows_each_other_arm_equally_often(count):
    """The unaudited run used to come first in every round: whatever a run's place did to it
    fell on the audited ones alone. Then the order only turned, and the arm after a given one
    was always the same one: a copy of the unaudited arm measured 2.65 % slower than itself
    in the place after another arm (docs/measurements.md, twenty-ninth session)."""
    arms = ["unaudited", "compiled", "python", "paused", "other"][:count]
    rounds = count * (2 if count % 2 else 1)  # a whole design
    orders = [bench.in_turn(arms, index) for index in range(rounds)]
    assert orders[0] == arms and bench.in_turn(arms, rounds) == arms
    for place in range(count):
        assert Counter(order[place] for order in orders) == Counter(arms * (rounds // count))
    after = Counter((order[k], order[k + 1]) for order in orders for k in range(count - 1))
    assert len(after) == count * (count - 1) and len(set(after.values())) == 1
    assert [bench.in_turn(["unaudited", "audited"], i)[0] for i in range(4)] == [
        "unaudited", "audited", "unaudited", "audited"]


def test_the_loop_pauses_only_its_paused_arms_and_puts_torchs_current_stream_back_for_one():
    """``bench_stream_loop.paused_as``: an ordinary arm runs as it is; ``checks`` with the
    audit paused; ``checks and current_stream`` also with the ``torch.cuda.current_stream``
    from before the audit installed its own; all as before once the block ends."""
    import torch

    import streamcheck
    from streamcheck import installer

    torchs = torch.cuda.current_stream
    aud = streamcheck.install("assert")
    try:
        if torch.cuda.current_stream is torchs:  # no GPU here: a stand-in for the audit's
            installer._registry.patch(torch.cuda, "current_stream",
                                      lambda original: lambda device=None: original(device))
        installed = torch.cuda.current_stream
        assert installed is not torchs
        seen = {}
        for group in ("", bench.PAUSED, bench.PAUSED_TORCH):
            with bench.paused_as(group):
                seen[group] = (installer._gate.auditor, torch.cuda.current_stream)
            assert installer._gate.auditor is aud and torch.cuda.current_stream is installed
        assert seen == {"": (aud, installed), bench.PAUSED: (None, installed),
                        bench.PAUSED_TORCH: (None, torchs)}
    finally:
        streamcheck.uninstall()
    assert torch.cuda.current_stream is torchs


def test_core_names_the_hooks_timed_and_a_missing_build_is_said():
    """``--core``: both cores by default (the compiled one first, where built), or the one
    named; asking for the compiled hooks where they are not built stops with the reason."""
    built = bench.speedups.built()
    both = SimpleNamespace(core="both", arm_without=["checks"])
    assert bench.cores(both) == (["compiled", "python"] if built else ["python"])
    assert bench.arms(both)[-1] == f"{bench.cores(both)[0]} but checks"
    assert bench.arms(SimpleNamespace(core="python", arm_without=[])) == ["python"]
    only = SimpleNamespace(core="compiled", arm_without=[])
    if built:
        assert bench.arms(only) == ["compiled"]
    else:
        with pytest.raises(SystemExit, match="not built here"):
            bench.cores(only)
