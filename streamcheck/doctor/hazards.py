"""The hazards that ``streamcheck doctor`` probes for.

Kept apart from the probes so the parent process (which never imports vLLM) and the child (which
does) name, explain and fix each hazard with the same words. Each probe id maps to one entry of
the hazard catalogue (:mod:`streamcheck.core.hazards`): ``rule`` is that entry's slug, the runtime
finding id that ``streamcheck`` audits report for the same mechanism (see docs/hazards.md), so a
person can go from "the doctor says affected" to "this is the finding my test run will show";
``fix`` is that entry's fix, the same words the audit and the scan give.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamcheck.core.hazards import for_doctor_id


@dataclass(frozen=True)
class Hazard:
    """One way vLLM's cached ``current_stream()`` can hand a collective the wrong stream."""

    id: str
    title: str
    question: str
    symptom: str

    @property
    def rule(self) -> str:
        """The runtime rule id (catalogue slug) of the mechanism this probe shows."""
        return for_doctor_id(self.id).slug

    @property
    def fix(self) -> str:
        return for_doctor_id(self.id).fix


MODULE_GLOBAL = Hazard(
    id="module-global-cache",
    title="module-global cache",
    question="does a stream made current in thread A become current_stream() in thread B?",
    symptom="NaN / wrong all-reduce results, or NCCL 'Cuda failure 400 invalid resource handle'",
)

FRESH_THREAD_DEVICE = Hazard(
    id="fresh-thread-device",
    title="fresh-thread device",
    question="with the main thread on the last device, which device is a fresh thread's "
             "first current_stream() on?",
    symptom="ranks >= 1 launch on a cuda:0 stream: NCCL 'Cuda failure 400 invalid resource "
            "handle', peers hang",
)

STALE_CACHE = Hazard(
    id="stale-cache",
    title="stale cache",
    question="after `with torch.Stream(...)` or torch.accelerator.set_stream(s), does "
             "current_stream() still return the old stream?",
    symptom="silently wrong all-reduce results (the collective runs unordered with compute)",
)

HAZARDS: tuple[Hazard, ...] = (MODULE_GLOBAL, FRESH_THREAD_DEVICE, STALE_CACHE)
BY_ID: dict[str, Hazard] = {h.id: h for h in HAZARDS}
