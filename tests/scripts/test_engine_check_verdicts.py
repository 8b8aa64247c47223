"""The real-engine check's verdicts (``scripts/engine_check.py``), on recorded results.

The engine itself runs only on a GPU machine; what the driver concludes from a case's result
is plain Python and is checked here, above all that a case which tested nothing cannot pass.
"""

from __future__ import annotations

import importlib.util
import json
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


def test_an_output_the_reference_gives_in_another_pass_is_its_own():
    """Under preemption the no-connector run's passes differ among themselves (measured:
    prompt 21 at TP=1, bf16); an output equal to one of them is the engine's own."""
    ref = {"0": [[1, 2, 3], [1, 9, 3], [1, 2, 3]], "1": [[4, 5, 6]] * 3}
    seen = {"0": [[1, 9, 3], [1, 9, 3], [1, 2, 3]], "1": [[4, 5, 6]] * 3}
    assert engine_check.token_differences(seen, ref) == []
    (line,) = engine_check.token_differences({**seen, "1": [[4, 5, 6], [4, 7, 6], [4, 5, 6]]},
                                             ref)
    assert "[0, 1, 0]" in line and "(1, 1, 1)" in line


TP1_ROWS = [{"pid": 1, "pynccl": 0, "connector": 0, "findings": []},
            {"pid": 2, "pynccl": 0, "connector": 9, "findings": []}]


def test_the_tp1_fault_cases_are_judged_as_the_tp2_ones_with_one_process_a_rank():
    """A case name the verdict does not know passes with no check at all: the TP=1 cases
    once did (their tokens were never compared)."""
    ran = {"tokens": TOKENS, "stats": {"workers": [worker()]}}
    audit, ref = {"rows": TP1_ROWS}, {"tokens": TOKENS}
    for case in ("faulty_tp1", "faulty_tp1_nopreempt", "faulty_tp1_f32"):
        assert engine_check.verdict(case, ran, audit, ref) == []
        wrong = {**ran, "tokens": {**TOKENS, "1": [[4, 5, 7]] * 3}}
        (line,) = engine_check.verdict(case, wrong, audit, ref)
        assert "(0, 1, 2), (1, 1, 2), (2, 1, 2)" in line
        assert engine_check.verdict(case, ran, {"rows": TP1_ROWS[:1]}, ref) == [
            "only 1 process reports (front end, engine with its worker)",
            "a worker audited no connector launch"]
    # at TP=2 the same audit (one worker, no pynccl) is short
    assert len(engine_check.verdict("faulty_tp2", ran, audit, ref)) == 2


def test_every_case_name_has_a_verdict_that_checks_something():
    """Each case kind's verdict looks at the result: a result with an error fails."""
    for name, spec in engine_check.CASES.items():
        if spec["kind"] in ("tp2", "ttft", "soak") and not name.startswith("ref_"):
            problems = engine_check.verdict(name, {"error": "boom", "tokens": TOKENS,
                                                   "answers": 0}, None, None)
            assert problems, name


def soak(**kw):
    """A soak result as ``run_soak`` gives it: 300 right answers, memory flat."""
    flat = {"after_warmup": 9000, "end": 9010, "max": 9010, "growth": 10}
    return {"answers": 300, "wrong": [], "errors": [], "error_count": 0,
            "alive_at_end": True, "rss_growth": flat, "gpu_growth": None,
            "counters": {"vllm:num_preemptions_total": 0.0,
                         "vllm:external_prefix_cache_hits_total": 64.0}, **kw}


SOAK_ROWS = [{"pid": p, "pynccl": n, "connector": n, "loads": n, "findings": []} for p, n in
             ((1, 0), (2, 0), (3, 90), (4, 90))]


def test_a_soak_passes_only_with_right_answers_flat_memory_and_audited_loads():
    assert engine_check.verdict("soak_serve", soak(), {"rows": SOAK_ROWS}, None) == []
    wrong = engine_check.verdict("soak_serve", soak(wrong=[[2, 5], [2, 5], [7, 0]]),
                                 {"rows": SOAK_ROWS}, None)
    assert wrong == ["3 of 300 answers differ from the no-connector run (0 preemptions); "
                     "(prompt, first differing token): [(2, 5), (7, 0)]"]
    grew = {"after_warmup": 9000, "end": 10000, "max": 10000, "growth": 1000}
    assert engine_check.verdict("soak_serve", soak(rss_growth=grew), {"rows": SOAK_ROWS},
                                None) == ["rss_growth: 9000 -> 10000 MiB after the warm-up "
                                          "(more than 900 MiB)"]
    assert engine_check.verdict("soak_serve", soak(rss_growth=None), {"rows": SOAK_ROWS},
                                None) == ["too few memory samples to tell"]


def test_a_soak_that_loaded_nothing_or_answered_nothing_fails():
    no_loads = [{**r, "loads": 0} for r in SOAK_ROWS]
    assert engine_check.verdict("soak_serve", soak(), {"rows": no_loads}, None) == [
        "no connector load was audited: the connector served nothing"]
    assert "no request was answered" in engine_check.verdict(
        "soak_serve", soak(answers=0), {"rows": SOAK_ROWS}, None)
    failed = engine_check.verdict("soak_serve", soak(error_count=4, errors=["prompt 1: x"]),
                                  {"rows": SOAK_ROWS}, None)
    assert failed == ["4 requests failed; first: ['prompt 1: x']"]
    unaudited = engine_check.verdict("soak_serve", soak(), {"rows": SOAK_ROWS[:3]}, None)
    assert unaudited == ["fewer than 2 processes audited pynccl launches (2 workers expected)"]
    assert engine_check.verdict("soak_serve", {"error": "no reference tokens"}, None,
                                None) == ["no reference tokens"]


def test_the_soak_serves_the_connector_and_engine_settings_it_names():
    cmd = engine_check.serve_command("/m", engine_check.CASES["soak_serve"])
    config = json.loads(cmd[cmd.index("--kv-transfer-config") + 1])
    assert config["kv_connector"] == "StreamcheckConnector"
    assert config["kv_connector_module_path"] == "streamcheck.connector.vllm_adapter"
    assert config["kv_load_failure_policy"] == "recompute"
    assert config["kv_connector_extra_config"] == {"backend": "host", "capacity_blocks": 600}
    assert cmd[cmd.index("--num-gpu-blocks-override") + 1] == "512"
    assert "--enable-prefix-caching" in cmd and "--served-model-name" in cmd
    leak = engine_check.serve_command("/m", engine_check.CASES["leak_serve"])
    assert "--no-enable-prefix-caching" in leak and "LeakyConnector" in leak[-1]


def test_a_soak_control_without_streamcheck_is_judged_on_its_answers_only():
    """No audit ran in a control (no connector, or vLLM's own): no audit rows to ask for."""
    assert engine_check.verdict("soak_serve_none", soak(), None, None) == []
    # the control's own differing answers are what the others are judged by, not a failure
    assert engine_check.verdict("soak_serve_none", soak(wrong=[[1, 2]]), None, None) == []
    assert engine_check.verdict("soak_serve_offloading", soak(wrong=[[1, 2]]), None, None) == [
        "1 of 300 answers differ from the no-connector run (0 preemptions); (prompt, first "
        "differing token): [(1, 2)]"]
    cmd = engine_check.serve_command("/m", engine_check.CASES["soak_serve_none"])
    assert "--kv-transfer-config" not in cmd
    own = engine_check.serve_command("/m", engine_check.CASES["soak_serve_offloading"])
    assert json.loads(own[-1])["kv_connector"] == "OffloadingConnector"


def test_a_soak_fails_only_on_answers_its_control_never_gave():
    """Without a connector the same server answers some prompts otherwise under load (the
    control); the connector's run fails on answers outside those, with where they part from
    the reference."""
    ref = {"tokens": {"2": [[1, 2, 3, 4]], "7": [[5, 6, 7, 8]]}}
    control = {"answers": 600, "variants": [[2, [1, 2, 9, 9], 3]]}
    known = soak(wrong=[[2, 2]], variants=[[2, [1, 2, 9, 9], 1]])
    assert engine_check.verdict("soak_serve", known, {"rows": SOAK_ROWS}, ref,
                                control=control) == []
    new = soak(wrong=[[2, 2], [7, 1], [7, 1]],
               variants=[[2, [1, 2, 9, 9], 1], [7, [5, 0, 7, 8], 2]])
    assert engine_check.verdict("soak_serve", new, {"rows": SOAK_ROWS}, ref,
                                control=control) == [
        "2 of 300 answers are ones the server without a connector never gave in 600 (0 "
        "preemptions); (prompt, first token that differs from the reference, tokens shared "
        "with the nearest answer of the reference or the control): [(7, 1, 1)]"]
    assert engine_check.verdict("soak_serve", new, {"rows": SOAK_ROWS}, ref)[0].startswith(
        "3 of 300 answers differ from the no-connector run")  # no control: every one counts
    unkept = {k: v for k, v in new.items() if k != "variants"}  # a result of an older client
    assert engine_check.verdict("soak_serve", unkept, {"rows": SOAK_ROWS}, ref,
                                control=control)[0].startswith("3 of 300 answers differ")
    off = engine_check.CASES["soak_serve_off"]
    assert off["activation"] == "none" and off["extra"]["streamcheck"] == "off"
    assert engine_check.verdict("soak_serve_off", known, None, ref, control=control) == []


def test_the_tp1_soaks_serve_on_one_gpu_and_ask_for_no_collectives():
    """soak1_*: the same servers at TP=1, against a TP=1 reference; one worker, which has no
    pynccl launches to audit, but must still have audited the connector's loads."""
    for name in ("soak1_serve", "soak1_serve_off", "soak1_serve_none"):
        spec = engine_check.CASES[name]
        cmd = engine_check.serve_command("/m", spec)
        assert cmd[cmd.index("--tensor-parallel-size") + 1] == "1"
        assert spec["ref"] == "ref_tp1"
    assert engine_check.CASES["soak1_serve"]["control"] == "soak1_serve_none"
    assert engine_check.CASES["ref_tp1"]["tp"] == 1
    one = [{"pid": 9, "pynccl": 0, "connector": 40, "loads": 3, "findings": []}]
    assert engine_check.verdict("soak1_serve", soak(), {"rows": one}, None) == []
    assert engine_check.verdict("soak_serve", soak(), {"rows": one}, None) == [
        "fewer than 2 processes audited pynccl launches (2 workers expected)"]
    none = [{**one[0], "connector": 0, "loads": 0}]
    assert engine_check.verdict("soak1_serve", soak(), {"rows": none}, None) == [
        "no process audited a connector launch",
        "no connector load was audited: the connector served nothing"]


def test_a_reference_case_that_failed_is_reported():
    assert engine_check.verdict("ref_tp1", {"error": "RuntimeError: no GPU"}, None, None,
                                wants_ref=False) == ["RuntimeError: no GPU"]
    assert engine_check.verdict("ref_tp1", {"tokens": TOKENS}, None, None,
                                wants_ref=False) == []


def test_a_soak_with_a_connector_must_be_served_by_it_audited_or_not():
    served = {"vllm:num_preemptions_total": 0.0, "vllm:external_prefix_cache_hits_total": 96.0}
    assert engine_check.verdict("soak1_serve_off", soak(counters=served), None, None,
                                connector=True) == []
    idle = {**served, "vllm:external_prefix_cache_hits_total": 0.0}
    assert engine_check.verdict("soak1_serve_off", soak(counters=idle), None, None,
                                connector=True) == [
        "vLLM counted no prompt token served by the connector"]
    unread = soak(counters={"vllm:num_preemptions_total": 0.0})
    assert engine_check.verdict("soak1_serve_off", unread, None, None) == [
        "vLLM counted no prompt token served by the connector (no counter read)"]
    assert engine_check.verdict("soak1_serve_none", soak(), None, None) == []


def test_a_reference_that_failed_now_falls_back_to_an_earlier_one(tmp_path):
    (tmp_path / "ref_tp1.json").write_text(json.dumps({"result": {"tokens": TOKENS}}))
    spec = engine_check.CASES["soak1_serve"]
    failed_now = {"ref_tp1": {"error": "CUDA out of memory"}}
    assert engine_check.reference(spec, failed_now, tmp_path) == {"tokens": TOKENS}
    assert engine_check.reference(spec, failed_now, None) is None
    assert engine_check.verdict("ref_tp1", {"seconds": 3}, None, None, wants_ref=False) == [
        "the reference case gave no tokens"]


class FakeSweep:
    """``subprocess.Popen`` of the split sweep: writes ``tokens`` (unless None) to its
    ``--out``, exits with ``code``, or runs past any timeout (``hang``)."""

    def __init__(self, tokens, code=0, hang=False):
        self.tokens, self.code, self.hang = tokens, code, hang
        self.cmd = self.env = None
        self.killed = []

    def popen(self, cmd, env, stdout, stderr, start_new_session):
        assert start_new_session  # so the whole group can be killed
        self.cmd, self.env = cmd, env
        stdout.write("sweep log\n")
        if self.tokens is not None:
            out = Path(cmd[cmd.index("--out") + 1])
            out.write_text(json.dumps({"result": {"case": "splits", "tokens": self.tokens}}))
        sweep = self

        class Proc:
            pid = 4242

            def wait(self, timeout=None):
                if sweep.hang and timeout is not None:
                    raise engine_check.subprocess.TimeoutExpired(cmd, timeout)
                return sweep.code

        return Proc()

    def install(self, monkeypatch):
        monkeypatch.setattr(engine_check.subprocess, "Popen", self.popen)
        monkeypatch.setattr(engine_check.os, "killpg", lambda pid, sig: self.killed.append(pid))
        return self


SPLIT_RESULT = soak(wrong=[[5, 2], [12, 3], [12, 3]],
                    variants=[[5, [1, 2, 9, 9], 1], [12, [5, 6, 7, 0], 2]])


def test_answers_a_prefill_split_gives_are_the_engines_own(tmp_path, monkeypatch):
    """``--explain-splits``: the soak's answers its control never gave are swept (only those
    prompts, the soak's dtype and TP size, no audit); what a split gives passes, the rest still
    fails and says it was looked for there."""
    ref = {"tokens": {"5": [[1, 2, 3, 4]], "12": [[5, 6, 7, 8]]}}
    control = {"answers": 1092, "variants": []}
    result = SPLIT_RESULT
    sweep = FakeSweep({"5": [[1, 2, 3, 4], [1, 2, 9, 9]], "12": [[5, 6, 7, 8]]})
    sweep.install(monkeypatch)
    widened, problem = engine_check.explain_by_splits(
        "/m", engine_check.CASES["soak1_serve_f32"], result, control,
        {"STREAMCHECK": "assert", "X": "1"}, tmp_path / "soak1_serve_f32-splits")
    assert problem is None
    cmd = sweep.cmd
    assert cmd[cmd.index("--prompts") + 1] == "5,12"
    assert cmd[cmd.index("--dtype") + 1] == "float32"
    assert "--inner" in cmd  # a family prefix split by a sibling's partial load is swept too
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "1"
    # told what to look for: the answers the control never gave, a prompt's own
    assert json.loads(Path(cmd[cmd.index("--want") + 1]).read_text()) == {
        "5": [[1, 2, 9, 9]], "12": [[5, 6, 7, 0]]}
    assert sweep.env == {"X": "1"}  # the sweep runs without the audit
    assert sweep.killed == [4242]  # its process group is gone afterwards
    assert widened["split_prompts"] == [5, 12]
    assert engine_check.wrong_answers(result, widened, ref) == (
        "2 of 300 answers are ones the server without a connector never gave in 1092 nor any "
        "prefill split of prompts [5, 12] (engine_splits.py) (0 preemptions); (prompt, first "
        "token that differs from the reference, tokens shared with the nearest answer of the "
        "reference or the control): [(12, 3, 3)]")
    explained = soak(wrong=[[5, 2]], variants=[[5, [1, 2, 9, 9], 1]])
    assert engine_check.wrong_answers(explained, widened, ref) is None
    assert engine_check.wrong_answers(explained, control, ref) is not None
    # a TP=2 soak is swept at TP=2: its numbers are not TP=1's
    two = FakeSweep({"5": []}).install(monkeypatch)
    engine_check.explain_by_splits("/m", engine_check.CASES["soak_serve"], result, control, {},
                                   tmp_path / "soak_serve-splits")
    assert two.cmd[two.cmd.index("--tensor-parallel-size") + 1] == "2"


def test_a_split_sweep_that_did_not_finish_is_a_problem_not_a_pass(tmp_path, monkeypatch):
    """Whatever goes wrong, the control comes back as it was (the soak still fails on its
    answers) and the reason is a problem of its own; a sweep cut short is killed, and the
    prompts it finished (its file is written after each) still widen the control."""
    control = {"answers": 10, "variants": []}
    spec = engine_check.CASES["soak1_serve"]
    answers = {"5": [[1, 2, 9, 9]], "12": [[5, 6, 7, 0]]}
    cases = {
        "exit 1 with a file": (FakeSweep(answers, code=1), "failed (exit 1): sweep log"),
        "no file": (FakeSweep(None), "failed (exit 0): sweep log"),
        "past its time": (FakeSweep(None, hang=True), "ran past 360 s"),
        "unreadable": (FakeSweep({"5": 3}), "could not run or be read"),
    }
    for name, (sweep, message) in cases.items():
        sweep.install(monkeypatch)
        same, problem = engine_check.explain_by_splits(
            "/m", spec, SPLIT_RESULT, control, {}, tmp_path / "s", per_prompt=120)
        assert same is control, name
        assert problem is not None and message in problem, (name, problem)
        assert problem.startswith("the split sweep of prompts [5, 12]"), name
        assert sweep.killed == [4242], name
    # cut short after some prompts: those explain their answers, the case still fails
    part = FakeSweep({"5": [[1, 2, 9, 9]]}, hang=True).install(monkeypatch)
    widened, problem = engine_check.explain_by_splits("/m", spec, SPLIT_RESULT, control, {},
                                                      tmp_path / "p", per_prompt=120)
    assert part.killed == [4242]
    assert problem == ("the split sweep of prompts [5, 12] ran past 360 s "
                       "(finished: prompts [5])")
    assert widened["split_prompts"] == [5]
    ref = {"tokens": {"5": [[1, 2, 3, 4]], "12": [[5, 6, 7, 8]]}}
    assert "[(12, 3, 3)]" in engine_check.wrong_answers(SPLIT_RESULT, widened, ref)
    stale = tmp_path / "s.json"  # an earlier sweep's file does not count for this one
    stale.write_text(json.dumps({"result": {"tokens": answers}}))
    FakeSweep(None, code=0).install(monkeypatch)
    assert engine_check.explain_by_splits("/m", spec, SPLIT_RESULT, control, {},
                                          tmp_path / "s")[0] is control
    nothing_new = soak(variants=[])
    assert engine_check.explain_by_splits("/m", spec, nothing_new, control, {},
                                          tmp_path / "t") == (control, None)


def test_every_case_is_judged_against_a_reference_of_its_own_tp_size_and_dtype() -> None:
    """A case compared with a reference run at another TP size or dtype would fail on
    numerics alone (or pass a wrong run against the wrong tokens)."""
    for name, spec in engine_check.CASES.items():
        for key in ("ref", "control"):
            if key not in spec:
                continue
            other = engine_check.CASES[spec[key]]
            assert other.get("tp", 2) == spec.get("tp", 2), (name, key)
            assert engine_check.case_dtype(other) == engine_check.case_dtype(spec), (name, key)


def test_every_offline_case_with_a_reference_fails_on_outputs_the_reference_never_gave():
    wrong = {"tokens": {**TOKENS, "1": [[4, 5, 7]] * 3}, "stats": {"workers": [worker()]}}
    judged = [name for name, spec in engine_check.CASES.items()
              if spec["kind"] == "tp2" and "ref" in spec]
    assert "faulty_tp1_f32" in judged and "offloading_tp2" in judged
    for name in judged:
        problems = engine_check.verdict(name, wrong, {"rows": ROWS}, {"tokens": TOKENS})
        assert any("never gave" in p for p in problems), name


def test_an_offline_case_output_a_prefill_split_gives_is_the_engines_own(tmp_path, monkeypatch):
    """``--explain-splits`` on an offline connector case: the outputs no pass of the reference
    gave are swept (the case's dtype and TP size); what a split gives passes, the rest fails
    and says where it was looked for."""
    ref = {"tokens": {"0": [[1, 2, 3]] * 3, "1": [[4, 5, 6], [4, 5, 8], [4, 5, 6]]}}
    result = {"tokens": {"0": [[1, 2, 3], [1, 7, 3], [1, 2, 3]], "1": [[4, 5, 8]] * 3},
              "stats": {"workers": [worker()]}}
    variants = engine_check.as_variants(result)
    assert sorted((i, tuple(t), n) for i, t, n in variants["variants"]) == [
        (0, (1, 2, 3), 2), (0, (1, 7, 3), 1), (1, (4, 5, 8), 3)]
    sweep = FakeSweep({"0": [[1, 2, 3], [1, 7, 3]]}).install(monkeypatch)
    spec = engine_check.CASES["faulty_tp1_f32"]
    widened, problem = engine_check.explain_by_splits(
        "/m", spec, variants, engine_check.as_variants(ref), {}, tmp_path / "f-splits")
    assert problem is None
    assert sweep.cmd[sweep.cmd.index("--prompts") + 1] == "0"  # prompt 1's is the reference's
    assert sweep.cmd[sweep.cmd.index("--dtype") + 1] == "float32"
    assert sweep.cmd[sweep.cmd.index("--tensor-parallel-size") + 1] == "1"
    audit = {"rows": TP1_ROWS}
    assert engine_check.verdict("faulty_tp1_f32", result, audit, ref, control=widened) == []
    (line,) = engine_check.verdict("faulty_tp1_f32", result, audit, ref)
    assert line.endswith("[(1, 0, 1)]")
    FakeSweep({"0": [[1, 2, 3]]}).install(monkeypatch)  # a sweep that does not give it
    narrow, _ = engine_check.explain_by_splits(
        "/m", spec, variants, engine_check.as_variants(ref), {}, tmp_path / "g-splits")
    (line,) = engine_check.verdict("faulty_tp1_f32", result, audit, ref, control=narrow)
    assert "nor any prefill split of prompts [0]" in line and line.endswith("[(1, 0, 1)]")
