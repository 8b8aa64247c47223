"""``scripts/engine_splits.py``: every split plan runs on an emptied prefix cache, prefixes
first, and its output is a control ``engine_variants.py`` reads."""

from __future__ import annotations

import json

import pytest

from tests.scripts.script_modules import load_script

engine_splits = load_script("engine_splits")
engine_variants = load_script("engine_variants")


def test_split_plans_cover_every_block_boundary_and_the_two_stage_ones():
    # 50 tokens: blocks of 16 end at 16, 32, 48; the last token is always computed, so a
    # local hit of 3 blocks (48 tokens) still leaves it
    assert engine_splits.split_plans(50, []) == [(), (1,), (2,), (3,)]
    assert engine_splits.split_plans(49, []) == [(), (1,), (2,), (3,)]
    assert engine_splits.split_plans(48, []) == [(), (1,), (2,)]
    assert engine_splits.split_plans(50, [2, 9]) == [(), (1,), (2,), (3,), (2, 3)]


def test_three_stage_plans_follow_the_two_stage_ones():
    """``--stages 3``: after the first boundary, every rising pair of later boundaries (the
    KV of a prompt in four pieces), after every plan of fewer pieces."""
    plans = engine_splits.split_plans(16 * 6 + 1, [2], stages=3)
    assert plans[:11] == [(), (1,), (2,), (3,), (4,), (5,), (6,),
                          (2, 3), (2, 4), (2, 5), (2, 6)]
    assert plans[11:] == [(2, 3, 4), (2, 3, 5), (2, 3, 6), (2, 4, 5), (2, 4, 6), (2, 5, 6)]
    # prompt 7 of the soaks (860 tokens, first 32): 75 plans with two stages, 285 with three
    assert len(engine_splits.split_plans(860, [32])) == 75
    assert len(engine_splits.split_plans(860, [32], stages=3)) == 285


def test_inner_plans_split_the_first_prefix_itself_after_every_other_plan():
    """``--inner``: (m, f) for every m below a first boundary f, as a sibling that loaded m
    blocks of the family's prefix leaves it, then with three stages each followed by k."""
    plain = engine_splits.split_plans(16 * 6 + 1, [3], stages=3)
    plans = engine_splits.split_plans(16 * 6 + 1, [3], stages=3, inner=True)
    assert plans[:len(plain)] == plain
    assert plans[len(plain):] == [(1, 3), (2, 3), (1, 3, 4), (1, 3, 5), (1, 3, 6),
                                  (2, 3, 4), (2, 3, 5), (2, 3, 6)]
    assert engine_splits.split_plans(16 * 6 + 1, [3], inner=True)[-2:] == [(1, 3), (2, 3)]
    # prompt 7 of the soaks: 31 more plans with two stages
    assert len(engine_splits.split_plans(860, [32], inner=True)) == 75 + 31
    # --inner-only: those alone, for a prompt whose other plans a sweep already ran
    assert engine_splits.split_plans(16 * 6 + 1, [3], stages=3, inner_only=True) == \
        plans[len(plain):]


class FakeLLM:
    """Answers as if the split point (the cached prefix) chose between two outputs."""

    def __init__(self) -> None:
        self.cached = 0
        self.calls: list[tuple[str, int]] = []

    def reset_prefix_cache(self) -> bool:
        self.cached = 0
        self.calls.append(("reset", 0))
        return True


@pytest.fixture
def fake_generate(monkeypatch):
    def generate(llm, prompts, max_tokens):
        (prompt,) = prompts
        llm.calls.append(("generate", len(prompt)))
        hit = llm.cached
        llm.cached = max(llm.cached, len(prompt) // 16)
        if max_tokens == 1:
            return [[0]]
        return [[7, 7, 7] if hit == 2 else [1, 2, 3]]

    monkeypatch.setattr(engine_splits, "generate", generate)


def test_each_plan_empties_the_cache_then_prefills_its_prefixes_in_order(fake_generate):
    llm = FakeLLM()
    assert engine_splits.answer_after(llm, list(range(50)), (1, 2), 3) == [7, 7, 7]
    assert llm.calls == [("reset", 0), ("generate", 16), ("generate", 32), ("generate", 50)]


def test_a_cache_that_will_not_empty_stops_the_sweep(fake_generate):
    llm = FakeLLM()
    llm.reset_prefix_cache = lambda: False
    with pytest.raises(RuntimeError, match="prefix cache"):
        engine_splits.answer_after(llm, list(range(50)), (1,), 3)


def test_the_sweep_asks_for_the_plans_of_its_stages(fake_generate, monkeypatch):
    asked = []
    monkeypatch.setattr(engine_splits, "split_plans",
                        lambda length, first, stages, inner, inner_only:
                        asked.append((first, stages, inner, inner_only)) or [()])
    engine_splits.sweep(FakeLLM(), {0: list(range(50))}, [2], 3, stages=3)
    engine_splits.sweep(FakeLLM(), {0: list(range(50))}, [2], 3, inner=True)
    engine_splits.sweep(FakeLLM(), {0: list(range(50))}, [2], 3, inner_only=True)
    assert asked == [([2], 3, False, False), ([2], 2, True, False), ([2], 2, False, True)]


def test_the_sweep_is_a_control_that_explains_a_split_point_answer(fake_generate, tmp_path):
    result = engine_splits.sweep(FakeLLM(), {0: list(range(50))}, [], 3)
    assert result["tokens"]["0"] == [[1, 2, 3], [1, 2, 3], [7, 7, 7], [1, 2, 3]]
    assert result["splits"]["0"] == [{"tokens": [1, 2, 3], "plans": [[], [1], [3]]},
                                     {"tokens": [7, 7, 7], "plans": [[2]]}]
    ref = {"tokens": {"0": [[1, 2, 3]]}}
    soak = {"variants": [[0, [7, 7, 7], 2], [0, [1, 2, 9], 1]]}
    rows = engine_variants.classify({"soak": soak}, {"splits": result}, ref)
    assert [(r["count"], r["also_given_by"]) for r in rows] == [(2, ["splits"]), (1, [])]
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"result": result}))
    assert engine_variants.load_result(path)["tokens"] == result["tokens"]


def test_the_answers_so_far_are_kept_after_each_prompt(fake_generate):
    """A sweep stopped part way keeps the prompts it finished (``main`` writes them)."""
    kept: list[list[str]] = []
    engine_splits.sweep(FakeLLM(), {0: list(range(50)), 3: list(range(40))}, [], 3,
                        keep=lambda so_far: kept.append(sorted(so_far["tokens"])))
    assert kept == [["0"], ["0", "3"]]


def test_a_prompt_sweep_stops_once_every_wanted_answer_was_given(fake_generate):
    """The answer after a hit of 2 blocks is the one wanted: plans (), (1,), (2,) run, (3,)
    does not; a prompt with nothing wanted of it runs every plan."""
    llm = FakeLLM()
    result = engine_splits.sweep(llm, {0: list(range(50)), 1: list(range(50))}, [], 3,
                                 want={0: [[7, 7, 7]]})
    assert result["tokens"]["0"] == [[1, 2, 3], [1, 2, 3], [7, 7, 7]]
    assert result["stopped_early"] == {"0": [3, 4]}
    assert len(result["tokens"]["1"]) == 4
    never = engine_splits.sweep(FakeLLM(), {0: list(range(50))}, [], 3, want={0: [[9]]})
    assert len(never["tokens"]["0"]) == 4 and never["stopped_early"] == {}


def test_an_unreadable_want_file_is_refused_before_the_engine_starts(tmp_path, monkeypatch,
                                                                      capsys):
    bad = tmp_path / "want.json"
    bad.write_text('{"5": "not token lists"}')
    monkeypatch.setattr("sys.argv", ["engine_splits.py", "/model", "--prompts", "5",
                                     "--out", str(tmp_path / "o.json"), "--want", str(bad)])
    with pytest.raises(SystemExit):
        engine_splits.main()
    assert "--want" in capsys.readouterr().err
