"""The verdict logic: a variant that does not show what it must is a mismatch."""

from __future__ import annotations

from streamcheck.repro.outcome import Observation, judge, observe
from streamcheck.repro.records import RankRecord
from streamcheck.repro.spec import Expectation

BUGGY = Expectation(symptom=("nan",))
FIXED = Expectation(clean=True)
GUARDED = Expectation(blocked=("foreign-stream",))


def typed(logs):
    """Rank records as the parent reads them back from the ranks' JSON lines."""
    return {rank: [RankRecord.from_json(r) for r in records] for rank, records in logs.items()}


def test_buggy_without_symptom_is_a_mismatch():
    ok, why = judge(BUGGY, Observation(finished=[0]), 1)
    assert not ok and "did not appear" in why


def test_fixed_with_a_false_finding_is_a_mismatch():
    ok, why = judge(FIXED, Observation(finished=[0], findings={"foreign-stream"}), 1)
    assert not ok and "false finding" in why


def test_guarded_that_still_shows_nan_is_a_mismatch():
    obs = Observation(blocked={0: ["foreign-stream"]}, symptoms={"nan": "rank0 1/1"})
    ok, why = judge(GUARDED, obs, 1)
    assert not ok and "symptom still appeared" in why


def test_guarded_blocked_by_another_rule_is_a_mismatch():
    ok, why = judge(GUARDED, Observation(blocked={0: ["device-mismatch"]}), 1)
    assert not ok and "not blocked by foreign-stream" in why


def test_observe_reads_rank_logs_and_hangs():
    logs = {
        0: [{"kind": "start", "rank": 0}, {"kind": "progress", "rank": 0,
            "observed": {"iterations_done": 3, "nan_iters": 2}}],
        1: [{"kind": "error", "rank": 1, "error_kind": "error-400",
             "message": "Cuda failure 400 'invalid resource handle'", "observed": {}}],
    }
    obs = observe(typed(logs), 2, timed_out=True, iterations=3)
    assert obs.hung == [0]
    assert set(obs.symptoms) == {"nan", "error-400", "hang"}
    assert "rank0 2/3" in obs.symptoms["nan"]


def test_rank_without_a_record_at_the_time_limit_never_started_and_decides_nothing():
    logs = {1: [{"kind": "start", "rank": 1},
                {"kind": "error", "rank": 1, "error_kind": "error-400", "message": "400"}]}
    obs = observe(typed(logs), 2, timed_out=True, iterations=3)
    assert obs.not_started == [0] and obs.hung == [] and "hang" not in obs.symptoms
    assert "rank(s) 0 never started" in obs.describe()
    ok, why = judge(Expectation(symptom=("error-400",), peers_hang=True), obs, 2)
    assert not ok and "never started" in why  # the symptom alone must not pass the variant
