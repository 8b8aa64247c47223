"""The float32 soak recorded on one H200 (2026-12-01, ``docs/measurements.md``): the verdict
tools on the real engine's answers. The connector's server gave 3 answers (prompts 5 and 12)
that two no-connector servers never gave; the engine gives both itself, with no connector,
when those prompts' prefills split at some block (``engine_splits.py``). Here the tools must
reach those conclusions from the recorded files."""

from __future__ import annotations

import json
from pathlib import Path

from tests.scripts.script_modules import load_script

RECORDED = Path(__file__).resolve().parent / "recorded" / "f32_soak"

engine_check = load_script("engine_check")
engine_variants = load_script("engine_variants")


def result(name: str) -> dict:
    return json.loads((RECORDED / f"{name}.json").read_text())["result"]


def test_the_two_no_connector_servers_give_the_same_other_answers():
    ref, first, second = (result(n) for n in ("ref_tp1_f32", "soak1_serve_none_f32",
                                               "soak1_serve_none_f32_2"))
    rows = engine_variants.classify({"second": second}, {"first": first}, ref)
    assert sorted(r["prompt"] for r in rows) == [0, 7, 22]
    assert all(r["also_given_by"] == ["first"] for r in rows)


def test_the_connector_only_answers_are_split_point_answers_of_the_engine():
    ref, soak, control = (result(n) for n in ("ref_tp1_f32", "soak1_serve_f32",
                                              "soak1_serve_none_f32"))
    splits = result("splits_f32")
    assert engine_check.wrong_answers(soak, control, ref).startswith(
        "3 of 810 answers are ones the server without a connector never gave in 1092")
    assert "[(5, 22), (12, 31)]" in engine_check.wrong_answers(soak, control, ref)
    assert engine_check.wrong_answers(soak, engine_check.with_splits(control, splits),
                                      ref) is None
    # which splits: prompt 12's other answer only after a local hit of 51 or 57 blocks
    plans = {tuple(row["tokens"]): row["plans"] for row in splits["splits"]["12"]}
    other = next(p for t, p in plans.items() if list(t) != ref["tokens"]["12"][0])
    assert sorted(tuple(p) for p in other) == [(32, 51), (32, 57), (51,), (57,)]
    rows = engine_variants.classify({"soak": soak}, {"control": control, "splits": splits},
                                    ref)
    assert len(rows) == 5 and all(r["also_given_by"] for r in rows)
