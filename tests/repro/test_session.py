"""The run session: one plan, each repro module loaded once per process that needs it, a typed
report that owns the streamcheck.run/1 document."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from streamcheck.documents import DocumentError, validate
from streamcheck.repro import session as session_module
from streamcheck.repro.discover import ReproFile
from streamcheck.repro.records import Done, Findings, Progress, Start
from streamcheck.repro.run_report import VERDICTS, RunReport, VariantResult
from streamcheck.repro.runner import cancelled_result
from streamcheck.repro.session import ReproSession
from streamcheck.runtime.select import BackendChoice

SIM = BackendChoice("sim", 0, "simulator requested (--backend sim): results are sim")

# A repro that says which process loaded it. ``fixed`` does nothing, so it is clean;
# ``buggy`` must show NaN and does not, so it is a mismatch.
TINY = '''
import os
from streamcheck.repro.spec import Expectation, ReproSpec

with open({loads!r}, "a") as fh:
    fh.write(f"{{os.getpid()}}\\n")

SPEC = ReproSpec(
    name="repro_tiny", hazard="foreign-stream", summary="a repro that only counts its loads",
    expect={{"buggy": Expectation(symptom=("nan",)), "fixed": Expectation(clean=True),
             "guarded": Expectation(blocked=("foreign-stream",))}},
    min_gpus={min_gpus}, max_world=1,
)


def run_rank(ctx):
    ctx.iteration_done(0)
'''


def tiny(tmp_path: Path, min_gpus: int = 1) -> tuple[ReproFile, Path]:
    loads = tmp_path / "loads.txt"
    path = tmp_path / "repros" / "repro_tiny.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(TINY.format(loads=str(loads), min_gpus=min_gpus))
    return ReproFile("repro_tiny", path), loads


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def started(self, label: str) -> None:
        self.events.append(("started", label))

    def finished(self, label: str, result: VariantResult) -> None:
        self.events.append((result.verdict, label))


def test_each_process_loads_the_repro_once_and_the_report_is_typed(tmp_path):
    repro, loads = tiny(tmp_path)
    session = ReproSession([repro], SIM, variants=["fixed", "buggy"], keep_dir=tmp_path / "w")
    listener = Listener()
    report = session.run(listener)
    pids = loads.read_text().split()
    # the plan, here, once for both variants; then each variant's own process, once each
    assert pids.count(str(os.getpid())) == 1
    assert len(pids) == 3 and len(set(pids)) == 3
    assert [r.variant for r in report.results] == ["fixed", "buggy"]  # plan order
    assert [r.verdict for r in report.results] == ["pass", "fail"]
    assert (report.matched, report.mismatched, report.exit_code) == (1, 1, 1)
    ranks = report.results[0].ranks
    assert [type(r) for r in ranks[0]] == [Start, Progress, Done, Findings]
    assert sorted(listener.events) == sorted([("started", "repro_tiny fixed"),
                                              ("started", "repro_tiny buggy"),
                                              ("pass", "repro_tiny fixed"),
                                              ("fail", "repro_tiny buggy")])
    assert report.logs_kept and report.work_dir == tmp_path / "w"


def test_the_report_writes_a_valid_document_and_reads_it_back(tmp_path):
    repro, _ = tiny(tmp_path)
    report = ReproSession([repro], SIM, variants=["fixed"]).run()
    assert not report.logs_kept and not report.work_dir.exists()  # green: logs removed
    document = json.loads(report.to_text())
    assert validate(document, "test") == "streamcheck.run/1"
    assert document["summary"] == {"matched": 1, "mismatched": 0, "skipped": 0, "cancelled": 0}
    again = RunReport.from_json(document)
    assert again.rows() == report.rows() and again.results[0].ranks == report.results[0].ranks
    with pytest.raises(DocumentError, match=r"streamcheck\.run/1"):
        RunReport.from_json({**document, "results": [{"repro": "x"}]})


def test_a_repro_needing_more_ranks_is_skipped_without_running(tmp_path):
    repro, loads = tiny(tmp_path, min_gpus=2)
    report = ReproSession([repro], SIM, gpus=1).run()
    assert [r.verdict for r in report.results] == ["skip"] * 3
    assert report.exit_code == 0 and "needs 2 ranks" in report.results[0].reason
    assert loads.read_text().split() == [str(os.getpid())]  # planned, never started


def test_a_stopped_session_cancels_what_has_not_run(tmp_path):
    repro, _ = tiny(tmp_path)
    session = ReproSession([repro], SIM)
    session.cancel.stop(signal.SIGTERM)
    report = session.run()
    assert [r.verdict for r in report.results] == ["cancelled"] * 3
    assert report.stopped_by == "SIGTERM" and report.exit_code == 128 + signal.SIGTERM
    assert report.logs_kept  # a stopped run keeps what it has
    assert report.to_json()["stopped_by"] == "SIGTERM"


def test_what_cannot_run_at_all_is_refused_before_anything_starts(tmp_path):
    repro, _ = tiny(tmp_path)
    with pytest.raises(ValueError, match="needs the cuda backend"):
        ReproSession([repro], SIM, engine="vllm")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="--keep"):
        ReproSession([repro], SIM, keep_dir=blocker / "sub")
    session = ReproSession([repro], SIM, variants=["fixed"])
    session.run()
    with pytest.raises(RuntimeError, match="runs once"):
        session.run()


def test_a_variant_that_raises_is_one_failed_row_and_the_run_goes_on(tmp_path, monkeypatch):
    real = session_module.run_variant

    def broken_for_buggy(repro, variant, *args, **kwargs):
        if variant == "buggy":
            raise RuntimeError("boom in the runner")
        return real(repro, variant, *args, **kwargs)

    monkeypatch.setattr(session_module, "run_variant", broken_for_buggy)
    repro, _ = tiny(tmp_path)
    listener = Listener()
    report = ReproSession([repro], SIM, variants=["fixed", "buggy"], jobs=1).run(listener)
    assert [r.verdict for r in report.results] == ["pass", "fail"]
    broken = report.results[1]
    assert "RuntimeError: boom in the runner" in broken.reason
    assert "boom in the runner" in broken.stderr["streamcheck.traceback"]
    assert ("fail", "repro_tiny buggy") in listener.events
    assert report.exit_code == 1 and report.logs_kept
    assert validate(json.loads(report.to_text()), "test") == "streamcheck.run/1"


def test_a_keyboard_interrupt_from_a_variant_starts_no_queued_variant(tmp_path, monkeypatch):
    started: list[str] = []

    def interrupted_first(repro, variant, backend, world, timeout, work, cancel, **kwargs):
        if variant != "buggy":  # queued behind it: picked up only once it has ended
            deadline = time.monotonic() + 20  # (a bound for the broken case: no timing here)
            while not cancel.is_set and time.monotonic() < deadline:
                time.sleep(0.01)
        if cancel.is_set:  # what run_variant does for a stopped run: start nothing
            return cancelled_result(repro, variant, backend, world, "-")
        started.append(variant)
        if variant == "buggy":
            raise KeyboardInterrupt
        return VariantResult(repro.name, variant, backend, world, "-", "-", "pass", 0.0)

    monkeypatch.setattr(session_module, "run_variant", interrupted_first)
    repro, _ = tiny(tmp_path)
    session = ReproSession([repro], SIM, variants=["buggy", "fixed", "guarded"], jobs=1)
    with pytest.raises(KeyboardInterrupt):
        session.run()
    assert started == ["buggy"]
    assert session.cancel.is_set and session.cancel.signum == signal.SIGINT


def test_a_row_refuses_a_verdict_the_document_does_not_know(tmp_path):
    schema = json.loads((Path(session_module.__file__).parents[1] / "schemas" / "run-1.json")
                        .read_text())
    enums = []

    def walk(node):
        if isinstance(node, dict):
            if "verdict" in node.get("properties", {}):
                enums.append(node["properties"]["verdict"]["enum"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert enums == [list(VERDICTS)]  # the rows' verdicts and the document's are the same
    with pytest.raises(ValueError, match="verdict 'passed' is not one of pass, fail"):
        VariantResult("repro_x", "fixed", "sim", 1, "clean", "clean", "passed", 0.1)
