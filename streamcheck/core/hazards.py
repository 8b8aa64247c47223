"""The hazard catalogue: one entry per hazard mechanism, read by every front end.

Three tools detect these mechanisms, each with its own ids: the runtime audit (rule slugs such
as ``foreign-stream``, :mod:`streamcheck.core.rules`), the static scan (``SC1xx`` codes,
:mod:`streamcheck.scan.rules`) and ``streamcheck doctor`` (probe ids such as
``module-global-cache``, :mod:`streamcheck.doctor.hazards`). An entry is keyed by the runtime
rule slug and names the scan codes and doctor ids that detect the same mechanism; its title and
its one fix text are what all three report. docs/hazards.md has a section per entry (anchor
``#<slug>``) whose fix is this text (tests/core/test_rule_catalogue.py checks both).
"""

from __future__ import annotations

from dataclasses import dataclass

DOC = "docs/hazards.md"


@dataclass(frozen=True)
class HazardEntry:
    """One hazard mechanism: its stable slug, title and fix, and who else detects it."""

    #: The runtime rule id; stable, never reused.
    slug: str
    title: str
    fix: str
    #: Static scan codes (``SC1xx``) that find the code pattern behind this mechanism.
    scan_codes: tuple[str, ...] = ()
    #: ``streamcheck doctor`` hazard ids whose probe shows this mechanism in an installed vLLM.
    doctor_ids: tuple[str, ...] = ()

    @property
    def doc(self) -> str:
        """Where the hazard is explained: ``docs/hazards.md#<slug>``."""
        return f"{DOC}#{self.slug}"


CATALOGUE: dict[str, HazardEntry] = {
    entry.slug: entry
    for entry in (
        HazardEntry(
            "foreign-stream",
            "launch on a stream another thread made current",
            "Keep any cache of the current stream per thread (a threading.local() attribute, "
            "as vLLM >= 0.10 does; a patched set_stream records into it too), or read the "
            "thread's real current stream at launch time (torch.cuda.current_stream(), or the "
            "cheap torch._C._cuda_getCurrentStream(device)). Until then, pass the stream "
            "explicitly to communicators (pynccl's stream=) and do not make a stream current "
            "in helper threads.",
            scan_codes=("SC101", "SC102", "SC104"),
            doctor_ids=("module-global-cache",),
        ),
        HazardEntry(
            "stale-stream-cache",
            "cached current stream disagrees with the thread's real one",
            "Read the real current stream at the launch (torch.cuda.current_stream(), or the "
            "cheap torch._C._cuda_getCurrentStream(device)), or route every stream switch "
            "through the cached setter (torch.cuda.stream() or torch.cuda.set_stream: a "
            "with torch.Stream(...) block and torch.accelerator.set_stream bypass it), or pass "
            "the stream explicitly to communicators (pynccl's stream=).",
            doctor_ids=("stale-cache",),
        ),
        HazardEntry(
            "device-mismatch",
            "stream on another device than the communicator or tensors",
            "Call torch.cuda.set_device(<rank's device>) first thing in every thread that "
            "creates streams or calls current_stream() (new threads start on cuda:0), or "
            "create streams with an explicit device=.",
            doctor_ids=("fresh-thread-device",),
        ),
        HazardEntry(
            "event-device-mismatch",
            "event recorded on a stream of another device than the event's",
            "Find what changed the thread's current device (a set_device with the wrong index, "
            "such as a data-parallel rank offset left out: the engine's is "
            "dp_rank * tp_size + tp_rank) and set the right one, or leave the engine thread's "
            "device alone, or record the event on an explicit stream of its own device.",
        ),
        HazardEntry(
            "stream-on-unbound-device",
            "helper thread created a stream on another device than its engine's",
            "Bind the helper thread to the rank's device before it creates streams or events: "
            "torch.cuda.set_device(<rank's device>) (or torch.accelerator.set_device_index) "
            "first thing in the thread, or in the pool's initializer; or create the stream "
            "with an explicit device: torch.cuda.Stream(device=device).",
            scan_codes=("SC103",),
        ),
        HazardEntry(
            "default-stream-in-worker",
            "helper thread works on the legacy default stream",
            "Give the helper thread its own stream, created on the rank's device (after "
            "set_device, or with torch.cuda.Stream(device=device)), and order it with the "
            "engine's stream through events (record on one, wait_event on the other) or "
            "wait_stream.",
            scan_codes=("SC105",),
        ),
        HazardEntry(
            "unsynced-handoff",
            "side stream reads a handed-off tensor without waiting for its producer",
            "Record an event on the producing stream after the tensor is written (at the "
            "handoff) and make the reading stream wait on it before the copy "
            "(stream.wait_event(event)); never poll with event.query() alone.",
        ),
        HazardEntry(
            "unordered-stream-switch",
            "thread switched to a new stream that never waited for the work it had queued",
            "Make the new stream wait for the one it replaces before it becomes current "
            "(new.wait_stream(torch.cuda.current_stream())), or create and switch to it before "
            "any work is queued on the thread.",
        ),
        HazardEntry(
            "write-after-read",
            "stream overwrites a buffer another stream may still be reading",
            "Record an event on the reading stream after its last read of the buffer and make "
            "the writing stream wait on it before the write (or free the buffer for reuse only "
            "once that event has completed).",
        ),
        HazardEntry(
            "write-after-write",
            "two streams write one buffer with nothing ordering the writes",
            "Order the second write after the first: record an event on the first writer's "
            "stream after its write and wait on it from the second writer's stream (or make one "
            "stream do both writes).",
        ),
    )
}


def _index(ids_of: str) -> dict[str, HazardEntry]:
    found: dict[str, HazardEntry] = {}
    for entry in CATALOGUE.values():
        for other in getattr(entry, ids_of):
            if other in found:
                raise ValueError(f"{other} is listed under both {found[other].slug} and "
                                 f"{entry.slug}")
            found[other] = entry
    return found


_BY_SCAN_CODE = _index("scan_codes")
_BY_DOCTOR_ID = _index("doctor_ids")


def for_scan_code(code: str) -> HazardEntry:
    """The entry a static scan code (``SC101``) detects; KeyError if it maps to none."""
    return _BY_SCAN_CODE[code]


def for_doctor_id(hazard_id: str) -> HazardEntry:
    """The entry a doctor hazard id (``stale-cache``) probes for; KeyError if none."""
    return _BY_DOCTOR_ID[hazard_id]
