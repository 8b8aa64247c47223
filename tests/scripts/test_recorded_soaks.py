"""The soaks recorded on one H200 (2026-12-01, ``docs/measurements.md``): the verdict tools on
the real engine's answers, which they must read as they were read then.

float32 (second session): the connector's server gave 3 answers (prompts 5 and 12) that two
no-connector servers never gave; the engine gives both itself, with no connector, when those
prompts' prefills split at some block (``engine_splits.py``).

bfloat16 (third session): the connector's server gave 16 answers (6 prompts) the no-connector
server never gave; a split sweep of 5 of those prompts (the device time ran out before prompt
22) gives 13 of them itself, and the fourth session's sweep (prompt 22 among its prompts) the
other 3.

bfloat16 (fourth session, ``bf16_soak2``): a second soak of the same server, 1,020 answers, 33
the no-connector server never gave (6 prompts); its own sweep (``--explain-splits``, run to
the end) gives 30 of them: 3 answers of prompt 7, from its token 41, are given by no split plan
of that prompt (75 of them, one- and two-stage). A three-piece sweep of prompt 7 (fifth
session, 285 plans) gives none of them either, nor one nearer to them (the nearest answer
of either sweep shares their first 44 tokens).

bfloat16 at TP=2 (fifth session, ``bf16_tp2``, two H200): the connector's server gave 552
answers, 19 of them outputs the no-connector server (588 answers) never gave, on 5 prompts; its
sweep at TP=2 (two-piece, ``--soak-from``) gives 18: one answer of prompt 17, from its token
22, is given by none of that prompt's 99 plans.

bfloat16 at TP=1 on the chain-keeping store (sixth session, ``bf16_soak3``): 1,044 answers,
37 the no-connector server never gave; the sweep (run to the end) leaves 2: one of prompt 4
(45 tokens shared with an answer of the engine) and one of prompt 7, the very answer the
fourth session's soak gave 3 times (before the store kept chains).

The fault-injecting cases at TP=1 (sixth session, ``tp1_faults``): every output is one the
no-connector run gives in one of its passes, but for one float32 output, which the engine
gives itself at a prefill split of its prompt (the second session's sweep).

Seventh session: the plans that split the family's prefix itself, (m, 32) (``--inner-only``),
give neither of the two answers the chain-keeping store's soak left; ``faulty_tp1`` again on
the connector that waits for a layer's loaded planes in one call (``tp1_faults2``)."""

from __future__ import annotations

from functools import partial

from tests.scripts.script_modules import load_script, recorded_result

engine_check = load_script("engine_check")
engine_variants = load_script("engine_variants")

f32 = partial(recorded_result, "f32_soak")
bf16 = partial(recorded_result, "bf16_soak")
bf16_2 = partial(recorded_result, "bf16_soak2")
bf16_tp2 = partial(recorded_result, "bf16_tp2")
bf16_3 = partial(recorded_result, "bf16_soak3")
tp1_faults = partial(recorded_result, "tp1_faults")
tp1_faults2 = partial(recorded_result, "tp1_faults2")


def test_the_two_no_connector_servers_give_the_same_other_answers():
    ref, first, second = (f32(n) for n in ("ref_tp1_f32", "soak1_serve_none_f32",
                                               "soak1_serve_none_f32_2"))
    rows = engine_variants.classify({"second": second}, {"first": first}, ref)
    assert sorted(r["prompt"] for r in rows) == [0, 7, 22]
    assert all(r["also_given_by"] == ["first"] for r in rows)


def test_the_connector_only_answers_are_split_point_answers_of_the_engine():
    ref, soak, control = (f32(n) for n in ("ref_tp1_f32", "soak1_serve_f32",
                                              "soak1_serve_none_f32"))
    splits = f32("splits_f32")
    # prompt 5's 2 answers are the offline reference's own (its second pass): not counted
    assert engine_check.wrong_answers(soak, control, ref).startswith(
        "1 of 810 answers are ones the server without a connector never gave in 1092")
    assert engine_check.wrong_answers(soak, control, ref).endswith("[(12, 31, 31)]")
    (five,) = [t for i, t, _ in engine_check.novel_variants(soak, control) if i == 5]
    assert five in ref["tokens"]["5"] and five != ref["tokens"]["5"][0]
    assert engine_check.wrong_answers(soak, engine_check.with_splits(control, splits),
                                      ref) is None
    # which splits: prompt 12's other answer only after a local hit of 51 or 57 blocks
    plans = {tuple(row["tokens"]): row["plans"] for row in splits["splits"]["12"]}
    other = next(p for t, p in plans.items() if list(t) != ref["tokens"]["12"][0])
    assert sorted(tuple(p) for p in other) == [(32, 51), (32, 57), (51,), (57,)]
    rows = engine_variants.classify({"soak": soak}, {"control": control, "splits": splits},
                                    ref)
    assert len(rows) == 5 and all(r["also_given_by"] for r in rows)


def test_the_sweep_explains_the_prompts_it_finished_and_only_those():
    ref, soak, control = (bf16(n) for n in ("ref_tp1", "soak1_serve", "soak1_serve_none"))
    splits = bf16("splits_bf16")
    assert splits["complete"] is False  # stopped by its time limit after five prompts
    assert sorted(int(i) for i in splits["tokens"]) == [4, 6, 9, 11, 20]
    before = engine_check.wrong_answers(soak, control, ref)
    assert before.startswith("16 of 840 answers are ones the server without a connector "
                             "never gave in 786")
    assert ("[(4, 14, 15), (6, 18, 18), (9, 18, 18), (11, 9, 9), (20, 17, 17), (22, 31, 31)]"
            in before)
    after = engine_check.wrong_answers(soak, engine_check.with_splits(control, splits), ref)
    assert after.startswith("3 of 840 answers")
    assert after.endswith("[(22, 31, 31)]")


def test_in_bfloat16_a_prompt_has_many_split_answers():
    """Unlike float32 (two answers a prompt), bfloat16 gives 4-9 answers a prompt across its
    split points: why a no-connector control meets fewer of them."""
    splits = bf16("splits_bf16")
    assert {k: len(rows) for k, rows in splits["splits"].items()} == {
        "4": 7, "6": 6, "9": 4, "11": 5, "20": 9}
    rows = engine_variants.classify({"soak": bf16("soak1_serve")},
                                    {"control": bf16("soak1_serve_none"), "splits": splits},
                                    bf16("ref_tp1"))
    assert [r["prompt"] for r in rows if not r["also_given_by"]] == [22]


def test_told_what_to_look_for_the_sweep_would_have_stopped_early(monkeypatch):
    """The recorded sweep replayed through ``engine_splits.sweep`` with ``want``, the
    answers ``engine_check`` asks it to explain: each prompt stops at the plan that gave the
    last of them (111 of the 441 plans run on the GPU)."""
    engine_splits = load_script("engine_splits")
    recorded = bf16("splits_bf16")["tokens"]
    monkeypatch.setattr(engine_splits, "split_plans",
                        lambda length, first, stages, inner, inner_only:
                        [(k,) for k in range(length)])
    monkeypatch.setattr(engine_splits, "answer_after",
                        lambda llm, prompt, plan, max_tokens: prompt[plan[0]])
    soak, control = bf16("soak1_serve"), bf16("soak1_serve_none")
    want: dict[int, list[list[int]]] = {}
    for i, tokens, _n in engine_check.novel_variants(soak, control):
        want.setdefault(i, []).append(tokens)
    prompts = {int(i): outs for i, outs in recorded.items()}  # "prompt" k: the k-th answer
    swept = engine_splits.sweep(None, prompts, [], 48, want=want)
    assert swept["stopped_early"] == {"4": [42, 81], "6": [42, 71], "9": [8, 79],
                                      "11": [9, 97], "20": [10, 113]}
    widened = engine_check.with_splits(control, swept)
    assert engine_check.wrong_answers(soak, widened, bf16("ref_tp1")).endswith("[(22, 31, 31)]")


def test_the_second_sweep_explains_the_first_soaks_last_answers():
    """Prompt 22's 3 answers (from token 31), the first soak's only unexplained ones, are
    answers the engine gives itself after some prefill split of prompt 22."""
    ref, soak, control = (bf16(n) for n in ("ref_tp1", "soak1_serve", "soak1_serve_none"))
    first_sweep, second_sweep = bf16("splits_bf16"), bf16_2("splits_bf16")
    assert "22" in second_sweep["tokens"] and "22" not in first_sweep["tokens"]
    widened = engine_check.with_splits(control, first_sweep)
    assert engine_check.wrong_answers(soak, widened, ref).endswith("[(22, 31, 31)]")
    assert engine_check.wrong_answers(
        soak, engine_check.with_splits(widened, second_sweep), ref) is None


def test_the_second_soak_leaves_three_answers_of_prompt_7_unexplained():
    ref, control = bf16("ref_tp1"), bf16("soak1_serve_none")
    soak, sweep = bf16_2("soak1_serve"), bf16_2("splits_bf16")
    assert soak["answers"] == 1020 and soak["error_count"] == 0
    assert engine_check.wrong_answers(soak, control, ref).startswith(
        "33 of 1020 answers are ones the server without a connector never gave in 786")
    assert sweep["complete"] is True
    # every prompt but 7 stopped once its wanted answers were given; 7 ran all its plans
    assert sorted(sweep["stopped_early"]) == ["10", "17", "20", "22", "4"]
    assert sum(len(row["plans"]) for row in sweep["splits"]["7"]) == 75
    left = engine_check.wrong_answers(soak, engine_check.with_splits(control, sweep), ref)
    assert left.startswith("3 of 1020 answers") and left.endswith("[(7, 41, 44)]")
    audit = bf16_2("soak1_serve", "audit")["rows"]  # the engine's processes, as reported
    assert sum(row["connector"] for row in audit) == 287126
    assert sum(row["loads"] for row in audit) == 214
    assert not any(row["findings"] for row in audit)


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


def test_three_piece_splits_of_prompt_7_do_not_give_its_answers():
    """``engine_splits.py --stages 3`` on prompt 7 (285 plans: a prompt's KV computed in up to
    four prefills, as a soak's loads can make it): six answers, none of the soak's three and
    none nearer to them than the two-piece sweep's nearest (their first 44 tokens)."""
    ref, control = bf16("ref_tp1"), bf16("soak1_serve_none")
    soak, two_piece, three_piece = (bf16_2(n) for n in ("soak1_serve", "splits_bf16",
                                                           "splits7_stages3"))
    assert three_piece["complete"] is True and three_piece["stages"] == 3
    assert sum(len(row["plans"]) for row in three_piece["splits"]["7"]) == 285
    assert len(three_piece["splits"]["7"]) == 6
    widened = engine_check.with_splits(engine_check.with_splits(control, two_piece),
                                       three_piece)
    assert engine_check.wrong_answers(soak, widened, ref).endswith("[(7, 41, 44)]")
    wanted = [tokens for _i, tokens, _n in engine_check.novel_variants(
        soak, engine_check.with_splits(control, two_piece))]
    assert len(wanted) == 1  # the three answers are one output
    nearest = {name: max(common_prefix(wanted[0], out) for out in sweep["tokens"]["7"])
               for name, sweep in (("two", two_piece), ("three", three_piece))}
    assert nearest == {"two": 44, "three": 44}


def test_at_tp2_the_sweep_leaves_one_answer_of_prompt_17_unexplained():
    ref, control, soak = (bf16_tp2(n) for n in ("ref_tp2", "soak_serve_none", "soak_serve"))
    sweep = bf16_tp2("splits_bf16")
    assert soak["answers"] == 552 and soak["error_count"] == 0
    assert soak["counters"]["vllm:num_preemptions_total"] == 0
    before = engine_check.wrong_answers(soak, control, ref)
    assert before.startswith("19 of 552 answers are ones the server without a connector "
                             "never gave in 588")
    assert sweep["complete"] is True and sweep["stages"] == 2
    assert sorted(sweep["stopped_early"]) == ["0", "21", "4", "6"]
    assert sum(len(row["plans"]) for row in sweep["splits"]["17"]) == 99
    after = engine_check.wrong_answers(soak, engine_check.with_splits(control, sweep), ref)
    assert after.startswith("1 of 552 answers") and after.endswith("[(17, 22, 40)]")
    rows = bf16_tp2("soak_serve", "audit")["rows"]
    workers = [row for row in rows if row["launches"]]
    assert len(workers) == 2  # both TP workers, each with collectives and the connector
    assert all(row["pynccl"] > 150_000 and row["connector"] > 150_000 and row["loads"] == 119
               for row in workers)
    assert not any(row["findings"] for row in rows)


def test_on_the_chain_keeping_store_two_answers_stay_one_of_them_the_earlier_soaks():
    ref, control = bf16("ref_tp1"), bf16("soak1_serve_none")
    soak, splits = bf16_3("soak1_serve"), bf16_3("splits_bf16")
    assert soak["answers"] == 1044 and soak["error_count"] == 0
    assert soak["counters"]["vllm:num_preemptions_total"] == 0
    assert engine_check.wrong_answers(soak, control, ref).startswith("37 of 1044 answers")
    assert splits["complete"] is True
    assert sorted(int(i) for i in splits["tokens"]) == [4, 5, 6, 7, 10, 11, 22]
    widened = engine_check.with_splits(control, splits)
    left = engine_check.wrong_answers(soak, widened, ref)
    assert left.startswith("2 of 1044 answers")
    assert left.endswith("[(4, 5, 45), (7, 41, 44)]")
    # prompt 7's answer is the fourth session's unexplained one, token for token
    earlier = engine_check.with_splits(engine_check.with_splits(
        control, bf16_2("splits_bf16")), bf16_2("splits7_stages3"))
    (before,) = engine_check.novel_variants(bf16_2("soak1_serve"), earlier)
    now = {i: tokens for i, tokens, _ in engine_check.novel_variants(soak, widened)}
    assert sorted(now) == [4, 7] and now[7] == before[1]
    (engine,) = [row for row in recorded_result("bf16_soak3", "soak1_serve", "audit")["rows"]
                 if row["launches"]]
    assert (engine["connector"], engine["loads"], engine["findings"]) == (297650, 278, [])


def test_at_tp1_faults_preemption_and_capacity_give_only_the_engines_own_outputs():
    ref, ref_f32 = bf16("ref_tp1"), tp1_faults("ref_tp1_f32")
    for case, reference, failed, injected, preempted in (
            ("faulty_tp1_nopreempt", ref, 24, 6, 0), ("faulty_tp1", ref, 16, 13, 30),
            ("faulty_tp1_f32", ref_f32, 16, 13, 30)):
        result, audit = tp1_faults(case), recorded_result("tp1_faults", case, "audit")
        (worker,) = result["stats"]["workers"]
        assert (worker["failed_loads"], worker["faults_injected"]) == (failed, injected)
        assert result["engine"]["vllm:num_preemptions"] == preempted
        problems = engine_check.verdict(case, result, audit, reference)
        if case != "faulty_tp1_f32":
            assert problems == [], case
            continue
        (line,) = problems
        assert line.endswith("[(2, 12, 31)]")
        # --explain-splits on this case: the second session's sweep gives that output
        widened = engine_check.with_splits(engine_check.as_variants(reference),
                                           f32("splits_f32"))
        assert engine_check.verdict(case, result, audit, reference, control=widened) == []
        rows = engine_variants.classify({case: result}, {
            "reference": reference, "splits": f32("splits_f32")}, reference)
        assert rows and all(row["also_given_by"] for row in rows)
        assert any(row["also_given_by"] == ["splits"] for row in rows)


def test_no_plan_splitting_the_family_prefix_itself_gives_the_two_answers_left():
    inner = bf16_3("splits_inner")
    assert inner["complete"] is True and inner["inner_only"] is True
    assert {i: len(outs) for i, outs in inner["tokens"].items()} == {"4": 31, "7": 31}
    assert inner["stopped_early"] == {}  # every plan ran (run with --want: none gave them all)
    ref, control, soak = bf16("ref_tp1"), bf16("soak1_serve_none"), bf16_3("soak1_serve")
    widened = engine_check.with_splits(engine_check.with_splits(
        control, bf16_3("splits_bf16")), inner)
    assert engine_check.wrong_answers(soak, widened, ref).endswith("[(4, 5, 45), (7, 41, 44)]")


def test_faults_and_preemption_on_the_one_wait_a_layer_give_only_the_engines_own_outputs():
    result, audit = tp1_faults2("faulty_tp1"), recorded_result("tp1_faults2", "faulty_tp1",
                                                              "audit")
    (worker,) = result["stats"]["workers"]
    assert (worker["slab_loads"], worker["failed_loads"], worker["faults_injected"]) == (
        93, 16, 13)
    assert result["engine"]["vllm:num_preemptions"] == 30
    assert engine_check.verdict("faulty_tp1", result, audit, bf16("ref_tp1")) == []
    (engine,) = [row for row in audit["rows"] if row["connector"]]
    assert engine["findings"] == [] and engine["loads"] > 0
