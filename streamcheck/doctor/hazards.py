"""The hazards that ``streamcheck doctor`` probes for.

Kept apart from the probes so the parent process (which never imports vLLM) and the child (which
does) name, explain and fix each hazard with the same words. Each probe id maps to one entry of
the hazard catalogue (:mod:`streamcheck.core.hazards`): ``rule`` is that entry's slug, the runtime
finding id that ``streamcheck`` audits report for the same mechanism (see docs/hazards.md), so a
person can go from "the doctor says affected" to "this is the finding my test run will show";
``fix`` is that entry's fix, the same words the audit and the scan give, after the remedy a
vLLM user has without touching code (``upgrade``), where there is one.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamcheck.core.hazards import for_doctor_id


@dataclass(frozen=True)
class Hazard:
    """One way vLLM's cached ``current_stream()`` can hand a collective the wrong stream."""

    id: str
    title: str
    #: what a user of the installed vLLM can do without changing code, said before the fix
    upgrade: str = ""

    @property
    def rule(self) -> str:
        """The runtime rule id (catalogue slug) of the mechanism this probe shows."""
        return for_doctor_id(self.id).slug

    @property
    def fix(self) -> str:
        fix = for_doctor_id(self.id).fix
        return f"{self.upgrade} In code you maintain: {fix}" if self.upgrade else fix


# What each probe asks is its probe's docstring (:mod:`streamcheck.doctor.probes`); what the
# hazard looks like is its catalogue entry's section in docs/hazards.md.
MODULE_GLOBAL = Hazard("module-global-cache", "module-global cache",
                       upgrade="Upgrade to vLLM >= 0.10 (its current-stream cache is per thread).")
FRESH_THREAD_DEVICE = Hazard("fresh-thread-device", "fresh-thread device")
STALE_CACHE = Hazard("stale-cache", "stale cache")

HAZARDS: tuple[Hazard, ...] = (MODULE_GLOBAL, FRESH_THREAD_DEVICE, STALE_CACHE)
BY_ID: dict[str, Hazard] = {h.id: h for h in HAZARDS}
