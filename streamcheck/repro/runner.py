"""Run one repro variant in a process group with a time limit; dump and kill whatever hangs.

On the simulator the variant is one process (``python -m streamcheck.repro.variant_main``) that
runs every rank as a thread; on CUDA it is one process per rank (``python -m
streamcheck.repro.launch_cuda``) that meet through an NCCL unique id rank 0 makes and
publishes in the variant's directory. Nothing of NCCL runs in this process: the bootstrap root
``ncclGetUniqueId`` starts lives until every rank joined, so it must die with the variant. Each
of those processes loads the repro module once; this process takes the already loaded ``SPEC``.

The processes run in a :class:`~streamcheck.runtime.procgroup.ProcessGroup`. Ranks write typed
records (:mod:`streamcheck.repro.records`); while they run, a rank's ``blocked`` or ``error``
record starts the spec's grace period on variants whose peers are expected to hang. On a
timeout every process is dumped (``py-spy dump`` when available, else the stacks faulthandler
prints on SIGUSR1), then killed: nothing outlives the variant.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from streamcheck.repro.discover import ReproFile, load
from streamcheck.repro.launch_cuda import ENV_ENGINE
from streamcheck.repro.outcome import Observation, judge, observe
from streamcheck.repro.records import RecordTail, read_records
from streamcheck.repro.run_report import VariantResult
from streamcheck.repro.spec import ReproSpec
from streamcheck.runtime.procgroup import REAP_S, Cancel, ProcessGroup

#: what each process of a variant runs: the simulator's one process, a CUDA rank
SIM_MODULE = "streamcheck.repro.variant_main"
RANK_MODULE = "streamcheck.repro.launch_cuda"


def cancelled_result(repro: ReproFile, variant: str, backend: str, world_size: int,
                     expected: str, seconds: float = 0.0) -> VariantResult:
    return VariantResult(repro.name, variant, backend, world_size, expected, "-", "cancelled",
                         round(seconds, 2), "the run was stopped by a signal")


def skipped_result(repro: ReproFile, variant: str, backend: str, expected: str,
                   reason: str) -> VariantResult:
    return VariantResult(repro.name, variant, backend, 0, expected, "-", "skip", 0.0, reason)


def variant_env(engine: str = "") -> dict[str, str]:
    """The variant's processes' environment: ours, with the engine (``vllm``, or the models
    by default) said explicitly."""
    env = dict(os.environ)
    env["NCCL_DEBUG"] = env.get("NCCL_DEBUG", "WARN")
    if engine == "vllm":
        env[ENV_ENGINE] = "vllm"
    else:
        env.pop(ENV_ENGINE, None)
    return env


def run_variant(repro: ReproFile, variant: str, backend: str, world_size: int,
                timeout: float | None, work_dir: Path, cancel: Cancel | None = None, *,
                spec: ReproSpec | None = None, engine: str = "") -> VariantResult:
    """Run one variant and judge it. ``spec``: the repro's SPEC when the caller has loaded
    the module already (else it is loaded here); ``engine``: "vllm" for ``--engine vllm``."""
    spec = spec if spec is not None else load(repro.path).SPEC
    cancel = cancel or Cancel()
    expected = spec.expect[variant].describe()
    if cancel.is_set:
        return cancelled_result(repro, variant, backend, world_size, expected)
    limit = timeout if timeout is not None else spec.timeout_s[backend]
    grace = spec.hang_grace_s[backend] if spec.expects_hang(variant) else None
    out = work_dir / f"{repro.name}.{variant}.{backend}.w{world_size}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = variant_env(engine)
    start = time.perf_counter()
    dumps: dict[str, str] = {}
    with ProcessGroup(out, cancel=cancel) as group:
        if backend == "sim":
            group.spawn([sys.executable, "-m", SIM_MODULE,
                         str(repro.path), variant, str(world_size), str(out)],
                        env=env, output=out / "variant.stderr")
        else:
            for rank in range(world_size):  # they meet through out/UID_FILE (launch_cuda)
                group.spawn([sys.executable, "-m", RANK_MODULE,
                             str(repro.path), variant, str(rank), str(world_size), str(out)],
                            env=env, output=out / f"rank{rank}.stderr")
        waited = group.wait(limit, grace=grace, failed=RecordTail(out).any_failed, poll=0.1)
        if waited.stopped and not cancel.is_set:
            dumps = group.dump()
    seconds = time.perf_counter() - start
    if cancel.is_set:
        return cancelled_result(repro, variant, backend, world_size, expected, seconds)
    records = read_records(out)
    rank_stderr = {int(p.stem[4:]): p.read_text(errors="replace")
                   for p in out.glob("rank*.stderr") if p.stem[4:].isdigit()}
    obs: Observation = observe(records, world_size, waited.stopped, spec.iterations[backend],
                               rank_stderr)
    if waited.stopped and not obs.hung and not obs.not_started:
        obs.symptoms["hang"] = "variant process stuck until killed"
    ok, why = judge(spec.expect[variant], obs, world_size)
    if group.survivors:  # SIGKILL did not end them within REAP_S (uninterruptible sleep)
        why += (f"; still alive {REAP_S:g} s after SIGKILL (left running): "
                f"pid(s) {', '.join(map(str, group.survivors))}")
    stderr = {p.name: p.read_text(errors="replace")[-6000:] for p in sorted(out.glob("*.stderr"))}
    return VariantResult(
        repro=repro.name, variant=variant, backend=backend, world_size=world_size,
        expected=expected, observed=obs.describe(), verdict="pass" if ok else "fail",
        seconds=round(seconds, 2), reason=why, dumps=dumps, ranks=records, stderr=stderr,
    )


def plan_world(spec: Any, backend: str, gpus: int | None, available: int) -> tuple[int, str]:
    """(world size, skip reason). The simulator has as many devices as asked."""
    want = gpus if gpus is not None else spec.max_world
    if backend == "sim":
        if want < spec.min_gpus:  # said, not silently raised
            return 0, f"needs {spec.min_gpus} ranks, --gpus {want} given"
        return min(want, spec.max_world), ""
    world = min(want, spec.max_world, available)
    if world < spec.min_gpus:
        return 0, f"needs {spec.min_gpus} GPU(s), {available} present"
    return world, ""


def temp_work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="streamcheck-run-"))
