"""Turn a variant's rank records into what was observed, and compare with the expectation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streamcheck.repro.records import Blocked, Done, Error, Findings, RankRecord
from streamcheck.repro.spec import COUNTED_SYMPTOMS, Expectation


@dataclass
class Observation:
    symptoms: dict[str, str] = field(default_factory=dict)  # symptom -> detail
    blocked: dict[int, list[str]] = field(default_factory=dict)  # rank -> rule ids
    findings: set[str] = field(default_factory=set)
    errors: dict[int, str] = field(default_factory=dict)
    hung: list[int] = field(default_factory=list)
    #: ranks killed before their first record: start-up outran the time limit
    not_started: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    foreign_launches: int = 0

    def describe(self) -> str:
        parts = [f"{k} ({v})" for k, v in self.symptoms.items()]
        if self.blocked:
            rules = sorted({r for rs in self.blocked.values() for r in rs})
            parts.append(f"blocked before launch: {', '.join(rules)} on rank(s) "
                         f"{','.join(map(str, sorted(self.blocked)))}")
        if self.findings:
            parts.append("findings: " + ", ".join(sorted(self.findings)))
        other = {r: e for r, e in self.errors.items() if "error-400" not in self.symptoms}
        if other:
            parts.append("errors: " + "; ".join(f"rank{r}: {e}" for r, e in other.items()))
        if self.not_started:
            parts.append(f"rank(s) {','.join(map(str, self.not_started))} never started "
                         "(the time limit ran out during start-up)")
        return "; ".join(parts) or "clean"


def observe(records: dict[int, list[RankRecord]], world_size: int, timed_out: bool,
            iterations: int, stderr: dict[int, str] | None = None) -> Observation:
    """What the ranks' records show. ``stderr``: each rank's output; NCCL prints ``Cuda failure
    400`` there while the exception (vLLM's pynccl) only says "unhandled cuda error"."""
    obs = Observation()
    stderr = stderr or {}
    for rank in range(world_size):
        mine = records.get(rank, [])
        last_observed: dict[str, Any] = {}
        ended = False
        for record in mine:
            observed = getattr(record, "observed", None)
            last_observed = observed or last_observed
            ended = ended or record.ends_rank
            if isinstance(record, Done):
                obs.finished.append(rank)
            elif isinstance(record, Blocked):
                obs.blocked[rank] = list(record.rules)
            elif isinstance(record, Error):
                obs.errors[rank] = record.message
                if record.error_kind == "error-400" or (
                        "unhandled cuda error" in record.message
                        and "Cuda failure 400" in stderr.get(rank, "")):
                    obs.symptoms["error-400"] = f"rank{rank}: {record.message[:80]}"
            elif isinstance(record, Findings):
                obs.findings.update(record.rules)
        nan = int(last_observed.get("nan_iters", 0))
        wrong = int(last_observed.get("wrong_iters", 0))
        done = int(last_observed.get("iterations_done", 0))
        if nan:
            obs.symptoms.setdefault("nan", "")
            obs.symptoms["nan"] += f"rank{rank} {nan}/{done} "
        if wrong:
            obs.symptoms.setdefault("wrong", "")
            obs.symptoms["wrong"] += f"rank{rank} {wrong}/{done} "
        for key in COUNTED_SYMPTOMS:
            if int(last_observed.get(key.replace("-", "_"), 0)):
                obs.symptoms[key] = f"rank{rank} {last_observed[key.replace('-', '_')]}/{done}"
        obs.foreign_launches += int(last_observed.get("foreign_launches", 0))
        if not mine and timed_out:
            # killed before its first record: start-up (imports, rendezvous) outran the time
            # limit; calling that a hang would let a too-short limit pass for a reproduced one
            obs.not_started.append(rank)
        elif not ended and timed_out:
            obs.hung.append(rank)
        elif not ended:
            obs.errors.setdefault(rank, "rank exited without a result")
    if obs.hung:
        obs.symptoms["hang"] = "rank(s) " + ",".join(map(str, obs.hung)) + " stuck until killed"
    for key in ("nan", "wrong"):
        if key in obs.symptoms:
            obs.symptoms[key] = obs.symptoms[key].strip()
    return obs


def judge(expect: Expectation, obs: Observation, world_size: int) -> tuple[bool, str]:
    """(matches, why). The why is the reason for a mismatch, empty when it matches.

    A rank that never started decides nothing, whatever the expectation: the run says nothing
    about the hazard, only that start-up did not finish within the time limit.
    """
    if obs.not_started:
        return (False, f"rank(s) {','.join(map(str, obs.not_started))} never started before "
                       "the time limit (imports, device set-up, rendezvous); raise --timeout "
                       "on a slow machine, or look at the rank's stack in the dump")
    seen = set(obs.symptoms)
    if expect.clean:
        problems = []
        if seen:
            problems.append("symptom " + ", ".join(sorted(seen)))
        if obs.blocked:
            problems.append("a launch was blocked")
        if obs.findings:
            problems.append("false finding " + ", ".join(sorted(obs.findings)))
        if obs.errors:
            problems.append("errors")
        if len(obs.finished) != world_size:
            problems.append("not every rank finished")
        return (not problems, "; ".join(problems))
    if expect.blocked:
        rules = {r for rs in obs.blocked.values() for r in rs}
        missing = set(expect.blocked) - rules
        problems = []
        if missing:
            problems.append("not blocked by " + ", ".join(sorted(missing)))
        if seen - set(expect.tolerate):
            problems.append("symptom still appeared: " + ", ".join(sorted(seen - set(
                expect.tolerate))))
        if obs.foreign_launches:
            problems.append(f"{obs.foreign_launches} launch(es) ran on the foreign stream")
        return (not problems, "; ".join(problems))
    if obs.blocked:
        return (False, "a launch was blocked in a variant that must show the symptom")
    if seen & set(expect.symptom):
        return (True, "")
    return (False, "expected " + expect.describe() + ", symptom did not appear")
