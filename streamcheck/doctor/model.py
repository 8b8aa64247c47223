"""What the doctor finds, as plain data with one JSON form for the CLI, CI and the child.

The probe child prints a :class:`ProbeOutcome` as JSON; the parent merges it with the environment
into a :class:`DoctorReport`. Keeping both sides on these dataclasses means the JSON that
``--json`` writes is exactly what the table shows, and an outcome that could not be read back
still becomes an honest "cannot tell" instead of a silent pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from streamcheck.doctor.hazards import BY_ID, HAZARDS

SCHEMA = "streamcheck.doctor/1"


class Verdict(str, Enum):
    """Three answers, never two: a probe that could not run is not a clean bill of health."""

    AFFECTED = "affected"
    NOT_AFFECTED = "not-affected"
    CANNOT_TELL = "cannot-tell"


@dataclass
class HazardResult:
    """One hazard's answer from one back end (``cuda`` or ``sim``), with what was observed."""

    hazard: str
    verdict: Verdict
    evidence: str
    backend: str

    def to_dict(self) -> dict[str, Any]:
        h = BY_ID[self.hazard]
        return {"hazard": self.hazard, "title": h.title, "rule": h.rule,
                "verdict": self.verdict.value, "evidence": self.evidence,
                "backend": self.backend, "fix": h.fix}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HazardResult:
        return cls(hazard=data["hazard"], verdict=Verdict(data["verdict"]),
                   evidence=data["evidence"], backend=data["backend"])


def cannot_tell_all(error: str, backend: str, limit: int = 110) -> list[HazardResult]:
    """Every hazard as "cannot tell", for a probe that never got to ask.

    The rows carry the error's first line, shortened: the full text is printed once above the
    table (and kept in the JSON's ``probes[].error``), not three times over.
    """
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    if len(first) > limit:
        # Keep the headline ("vLLM is not installed: how to get it ...") whole where there is one.
        cut = first.find(": ", 15)
        head = first[:cut] if 0 < cut < limit else first[: limit - 1].rstrip() + "…"
        first = f"{head} (full text in the probe error)"
    reason = f"probe could not run: {first}"
    return [HazardResult(h.id, Verdict.CANNOT_TELL, reason, backend) for h in HAZARDS]


@dataclass
class VllmInfo:
    """Which vLLM the child probed, and how (platform it resolved, shim used, if any)."""

    version: str | None = None
    location: str | None = None
    accessor: str | None = None
    platform: str | None = None
    shim: str | None = None
    # From vllm_compat: what the release table and the source text say. Shown next to the
    # behavioural verdicts as a cross-check, never used to decide them.
    cache_kind_by_version: str | None = None
    cache_kind_by_source: str | None = None


@dataclass
class ProbeOutcome:
    """Everything one probe child reports back."""

    backend: str
    devices: int = 0
    vllm: VllmInfo = field(default_factory=VllmInfo)
    results: list[HazardResult] = field(default_factory=list)
    error: str | None = None
    stubs: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)  # launch sites found

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "devices": self.devices, "vllm": asdict(self.vllm),
                "results": [r.to_dict() for r in self.results], "error": self.error,
                "stubs": self.stubs, "targets": self.targets}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeOutcome:
        return cls(backend=data["backend"], devices=int(data.get("devices", 0)),
                   vllm=VllmInfo(**data.get("vllm", {})),
                   results=[HazardResult.from_dict(r) for r in data.get("results", [])],
                   error=data.get("error"), stubs=list(data.get("stubs", [])),
                   targets=list(data.get("targets", [])))


@dataclass
class EnvItem:
    """One line of the environment report: a short value, and the long story if there is one."""

    name: str
    value: str
    ok: bool | None = None
    detail: str | None = None


@dataclass
class DoctorReport:
    """The whole answer: environment, probe runs, and the per-hazard results to act on."""

    environment: list[EnvItem]
    probes: list[ProbeOutcome]
    vllm_path: list[str] = field(default_factory=list)

    @property
    def results(self) -> list[HazardResult]:
        return [r for p in self.probes for r in p.results]

    @property
    def exit_code(self) -> int:
        """1 when any hazard is affected, else 0 ("cannot tell" does not fail CI by itself)."""
        return 1 if any(r.verdict is Verdict.AFFECTED for r in self.results) else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "environment": [asdict(e) for e in self.environment],
            "vllm_path": self.vllm_path,
            "probes": [p.to_dict() for p in self.probes],
            "hazards": [r.to_dict() for r in self.results],
            "affected": sorted({r.hazard for r in self.results
                                if r.verdict is Verdict.AFFECTED}),
            "exit_code": self.exit_code,
        }
