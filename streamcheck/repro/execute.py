"""Run one rank's ``run_rank`` and log how it ended: done, blocked, or error (classified)."""

from __future__ import annotations

import traceback
from types import ModuleType

from streamcheck.core.errors import StreamHazardError
from streamcheck.installer import current_auditor
from streamcheck.repro.context import RankContext
from streamcheck.repro.records import Blocked, Done, Error, Findings, Start


def classify_error(exc: BaseException) -> str:
    text = f"{exc} {getattr(exc, 'detail', '') or ''}"
    if "invalid resource handle" in text or "failure 400" in text.lower():
        return "error-400"
    return type(exc).__name__


def execute_rank(module: ModuleType, ctx: RankContext) -> None:
    ctx.log.write(Start, variant=ctx.variant, backend=ctx.backend, device=ctx.device,
                  world_size=ctx.world_size, engine=ctx.engine)
    try:
        module.run_rank(ctx)
    except StreamHazardError as exc:
        ctx.log.write(Blocked, rules=list(exc.rule_ids), observed=dict(ctx.observed), text=str(exc))
    except Exception as exc:
        ctx.log.write(Error, error_kind=classify_error(exc), message=str(exc)[:2000],
                      traceback=traceback.format_exc()[-4000:], observed=dict(ctx.observed))
    else:
        ctx.log.write(Done, observed=dict(ctx.observed))


def log_findings(ctx: RankContext) -> None:
    """The process auditor's findings (record/warn modes), for the fixed variant's verdict."""
    auditor = current_auditor()
    if auditor is None:
        return
    entries = auditor.entries()
    ctx.log.write(Findings, rules=sorted({e.finding.rule_id for e in entries}),
                  launches_audited=auditor.launches,
                  detail=[f"{e.finding.rule_id} x{e.count}: {e.finding.message}" for e in entries])
