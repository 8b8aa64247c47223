"""``scripts/bench_stream_loop.py``'s state ablation (the loop itself needs a GPU): each variant
runs with exactly the state it names changed, and everything is put back afterwards."""

from __future__ import annotations

import gc
from types import SimpleNamespace

from streamcheck.core import provenance
from tests.scripts.script_modules import load_script

bench = load_script("bench_stream_loop")


def test_the_state_variants_change_what_they_name_and_restore_it():
    seen = []
    entry = SimpleNamespace(finding=SimpleNamespace(rule_id="unsynced-handoff"))

    def audited_vs_not(parts, mode):
        seen.append((provenance.LOG_LENGTH, gc.get_freeze_count() > frozen, mode, parts))
        return 1.0 + len(seen) / 100, 100.0, [entry], 0

    kept, frozen = provenance.LOG_LENGTH, gc.get_freeze_count()
    findings: list[str] = []
    out = bench.state_ablation(audited_vs_not, findings)
    assert out == {"as_shipped_again": 1.01, "as_shipped_again_unaudited_us": 100.0,
                   "short_switch_log": 1.02, "short_switch_log_unaudited_us": 100.0,
                   "gc_frozen": 1.03, "gc_frozen_unaudited_us": 100.0}
    # the control first, as shipped; then each variant with only its own state changed
    assert [s[:3] for s in seen] == [(kept, False, "assert"), (64, False, "assert"),
                                     (kept, True, "assert")]
    assert all(s[3] == frozenset(bench.PARTS) for s in seen)  # the whole loop each time
    assert findings == ["unsynced-handoff"] * 3  # what a variant finds is not dropped
    assert (provenance.LOG_LENGTH, gc.get_freeze_count()) == (kept, frozen)


def test_each_rounds_own_ratio_is_paired_with_its_own_unaudited_run():
    """A host that slows down over the run moves both runs of a round: the paired ratios stay
    put where the ratio of the medians would not."""
    plain = [100.0, 200.0, 400.0]
    audited = [110.0, 204.0, 480.0]
    assert bench.paired_ratio(audited, plain) == (1.1, 1.02, 1.2, None, None)  # 3 rounds
