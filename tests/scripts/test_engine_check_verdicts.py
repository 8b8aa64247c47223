"""The real-engine check's verdicts (``scripts/engine_check.py``), on recorded results.

The engine itself runs only on a GPU machine; what the driver concludes from a case's result
is plain Python and is checked here, above all that a case which tested nothing cannot pass.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "engine_check.py"
spec = importlib.util.spec_from_file_location("engine_check", SCRIPT)
engine_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(engine_check)

TOKENS = {"0": [[1, 2, 3]] * 3, "1": [[4, 5, 6]] * 3}
ROWS = [{"pid": p, "pynccl": n, "connector": n, "findings": []} for p, n in
        ((1, 0), (2, 0), (3, 9), (4, 9))]


def worker(**kw):
    return {"failed_loads": 0, "load_bytes": 1 << 20, "load_calls": 10, **kw}


def test_a_faulty_case_whose_loads_never_ran_fails_even_with_the_reference_tokens():
    """Every load failing is recomputed, so the tokens equal the reference's: without this
    check a connector whose loads all broke would pass (it did once, when the fault injector
    no longer fitted the runtime)."""
    ran = {"tokens": TOKENS, "stats": {"workers": [worker(), worker()]}}
    never = {"tokens": TOKENS, "stats": {"workers": [
        worker(failed_loads=19, load_calls=0, load_bytes=0), worker()]}}
    audit, ref = {"rows": ROWS}, {"tokens": TOKENS}
    assert engine_check.verdict("faulty_tp2", ran, audit, ref) == []
    problems = engine_check.verdict("faulty_tp2", never, audit, ref)
    assert problems == ["worker 0: 19 loads failed and the fault injector saw none: the loads "
                        "never ran"]
    everything_failed = {"tokens": TOKENS, "stats": {"workers": [
        worker(failed_loads=5, load_calls=None, load_bytes=0), worker()]}}
    assert engine_check.verdict("clean_tp2", everything_failed, audit, ref) == [
        "worker 0: every load failed (5); nothing was loaded"]


def test_token_differences_name_the_pass_prompt_and_first_token():
    changed = {"0": [[1, 2, 3], [1, 9, 3], [1, 2, 3]], "1": [[4, 5, 6]] * 3}
    assert engine_check.token_differences(TOKENS, TOKENS) == []
    (line,) = engine_check.token_differences(changed, TOKENS)
    assert "[0, 1, 0]" in line and "(1, 0, 1)" in line
