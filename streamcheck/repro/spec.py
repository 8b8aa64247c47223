"""What a repro declares about itself, and what each variant must show.

A repro module defines ``SPEC`` (a :class:`ReproSpec`) and ``run_rank(ctx)``. Variants are
always the same three: ``buggy`` (the symptom must appear, audit off), ``fixed`` (clean, and
the audit in ``record`` mode finds nothing), ``guarded`` (the buggy code under ``assert``: the
hazard is reported before the launch and the symptom does not follow).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SYMPTOMS = ("nan", "wrong", "error-400", "hang", "corrupt-save", "overwritten-read",
            "lost-load", "event-device-error")
#: Symptoms a rank counts itself (``ctx.count("corrupt_save")``), by the counter's name.
COUNTED_SYMPTOMS = ("corrupt-save", "overwritten-read", "lost-load", "event-device-error")
VARIANT_MODES = {"buggy": "off", "fixed": "record", "guarded": "assert"}


@dataclass(frozen=True)
class Expectation:
    """What must be observed. Exactly one of symptom / clean / blocked is set."""

    symptom: tuple[str, ...] = ()  # any of these observed counts as the symptom
    clean: bool = False
    blocked: tuple[str, ...] = ()  # rule ids that must stop the launch
    peers_hang: bool = False  # a peer is expected to hang: the runner waits less before killing
    #: symptoms that may follow without failing a blocked expectation: when the audit stops
    #: one rank's collective, a peer that already launched its half waits for it (NCCL has no
    #: way to tell it); the audit prevents the error, not that wait
    tolerate: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [s for s in (*self.symptom, *self.tolerate) if s not in SYMPTOMS]
        if unknown:
            raise ValueError(f"unknown symptom(s) {unknown}; known: {', '.join(SYMPTOMS)}")

    def describe(self) -> str:
        if self.clean:
            return "clean"
        if self.blocked:
            tolerated = f" (peer may {', '.join(self.tolerate)})" if self.tolerate else ""
            return "blocked: " + ", ".join(self.blocked) + tolerated
        return " or ".join(self.symptom)


@dataclass(frozen=True)
class PublicReport:
    """A public bug report a repro reproduces: ``ref`` as ``owner/repo#number``."""

    ref: str
    url: str
    title: str = ""
    fix: str = ""  # the upstream fix: a PR or commit link, or "" when none landed

    def __post_init__(self) -> None:
        owner_repo, sep, number = self.ref.partition("#")
        if not sep or "/" not in owner_repo or not number.isdigit():
            raise ValueError(f"report ref {self.ref!r} is not owner/repo#number")
        if not self.url.startswith("https://"):
            raise ValueError(f"report {self.ref}: url {self.url!r} is not an https link")


@dataclass(frozen=True)
class ReproSpec:
    name: str
    hazard: str
    summary: str
    expect: dict[str, Expectation]
    #: the public reports whose mechanism this repro reproduces, and that mechanism in a
    #: paragraph (streams, events, threads, buffers: who writes, who reads, what is missing)
    reports: tuple[PublicReport, ...] = ()
    mechanism: str = ""
    min_gpus: int = 1
    max_world: int = 2
    iterations: dict[str, int] = field(default_factory=lambda: {"cuda": 30, "sim": 3})
    timeout_s: dict[str, float] = field(default_factory=lambda: {"cuda": 90.0, "sim": 20.0})
    #: once a rank has failed, how long its peers may still run before they count as hung
    hang_grace_s: dict[str, float] = field(default_factory=lambda: {"cuda": 12.0, "sim": 2.0})

    def __post_init__(self) -> None:
        missing = set(VARIANT_MODES) - set(self.expect)
        if missing:
            raise ValueError(f"{self.name}: no expectation for variants {sorted(missing)}")

    def mode_of(self, variant: str) -> str:
        return VARIANT_MODES[variant]

    def expects_hang(self, variant: str) -> bool:
        expect = self.expect[variant]
        return expect.peers_hang or "hang" in expect.symptom
