"""The hazards that ``streamcheck doctor`` probes for, each with its one-line fix.

Kept apart from the probes so the parent process (which never imports vLLM) and the child (which
does) name, explain and fix each hazard with the same words. ``rule`` is the runtime finding id
that ``streamcheck`` audits report for the same mechanism (see docs/hazards.md), so a person can
go from "the doctor says affected" to "this is the finding my test run will show".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hazard:
    """One way vLLM's cached ``current_stream()`` can hand a collective the wrong stream."""

    id: str
    title: str
    rule: str
    question: str
    symptom: str
    fix: str


MODULE_GLOBAL = Hazard(
    id="module-global-cache",
    title="module-global cache",
    rule="foreign-stream",
    question="does a stream made current in thread A become current_stream() in thread B?",
    symptom="NaN / wrong all-reduce results, or NCCL 'Cuda failure 400 invalid resource handle'",
    fix="upgrade to vLLM >= 0.10 (per-thread cache); until then pass stream= to every pynccl "
        "call and never switch streams in helper threads",
)

FRESH_THREAD_DEVICE = Hazard(
    id="fresh-thread-device",
    title="fresh-thread device",
    rule="device-mismatch",
    question="with the main thread on the last device, which device is a fresh thread's "
             "first current_stream() on?",
    symptom="ranks >= 1 launch on a cuda:0 stream: NCCL 'Cuda failure 400 invalid resource "
            "handle', peers hang",
    fix="call torch.cuda.set_device(<rank's device>) first thing in every helper thread, before "
        "anything calls current_stream() or creates a stream",
)

STALE_CACHE = Hazard(
    id="stale-cache",
    title="stale cache",
    rule="stale-stream-cache",
    question="after `with torch.Stream(...)` or torch.accelerator.set_stream(s), does "
             "current_stream() still return the old stream?",
    symptom="silently wrong all-reduce results (the collective runs unordered with compute)",
    fix="switch streams around vLLM code only with torch.cuda.stream()/torch.cuda.set_stream, "
        "or pass stream= explicitly to pynccl calls",
)

HAZARDS: tuple[Hazard, ...] = (MODULE_GLOBAL, FRESH_THREAD_DEVICE, STALE_CACHE)
BY_ID: dict[str, Hazard] = {h.id: h for h in HAZARDS}
