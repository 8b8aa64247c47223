"""Run a variant on real GPUs: one process per rank, NCCL unique id handed down in argv.

The ranks inherit this process's process group, which the runner created for the variant, so
killing the group on a timeout takes every rank with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from streamcheck.repro.context import RankContext, ResultLog
from streamcheck.repro.execute import execute_rank, log_findings

ENV_ENGINE = "STREAMCHECK_REPRO_ENGINE"


def run_variant_cuda(repro_path: str, module: ModuleType, variant: str, world_size: int,
                     out_dir: Path) -> int:
    from streamcheck.runtime.nccl import unique_id

    uid = unique_id().hex()
    env = dict(os.environ, NCCL_DEBUG=os.environ.get("NCCL_DEBUG", "WARN"))
    procs = []
    for rank in range(world_size):
        cmd = [sys.executable, "-m", "streamcheck.repro.launch_cuda", repro_path, variant,
               str(rank), str(world_size), uid, str(out_dir)]
        stderr = open(out_dir / f"rank{rank}.stderr", "w")  # noqa: SIM115 - child owns it
        procs.append(subprocess.Popen(cmd, env=env, stdout=stderr, stderr=subprocess.STDOUT))
        stderr.close()
    return max(p.wait() for p in procs)


def rank_main(repro_path: str, variant: str, rank: int, world_size: int, uid_hex: str,
              out_dir: Path) -> None:
    """Entry point of one rank process."""
    import torch

    from streamcheck import installer
    from streamcheck.repro.discover import load
    from streamcheck.runtime.nccl import NcclCommunicator

    module = load(repro_path)
    spec = module.SPEC
    torch.cuda.set_device(rank)
    torch.manual_seed(0)  # the same inputs on every rank, so results can be checked exactly
    installer.install(spec.mode_of(variant), runtime="cuda")
    device = torch.device("cuda", rank)
    log = ResultLog(str(out_dir / f"rank{rank}.jsonl"), rank)
    comms: list[NcclCommunicator] = []

    def make_comm(accessor: object) -> NcclCommunicator:
        comm = NcclCommunicator(world_size, rank, bytes.fromhex(uid_hex), rank,
                                current_stream=accessor)  # type: ignore[arg-type]
        comms.append(comm)
        return comm

    def poisoned_like(t: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(t).fill_(float("nan"))

    engine, engine_current_stream = "", None
    if os.environ.get(ENV_ENGINE) == "vllm":
        from streamcheck.repro.engine_vllm import setup

        port = 20000 + int(uid_hex[:8], 16) % 20000
        engine, engine_current_stream, make_comm = setup(rank, world_size, port)  # type: ignore[assignment]
    ctx = RankContext(
        repro=spec.name, variant=variant, backend="cuda", rank=rank, world_size=world_size,
        iterations=spec.iterations["cuda"], api=torch.cuda, device=rank, log=log,
        randn=lambda *shape, scale=1.0: torch.randn(*shape, device=device) * scale,
        poisoned_like=poisoned_like, make_communicator=make_comm,
        engine=engine, engine_current_stream=engine_current_stream,
    )
    execute_rank(module, ctx)
    log_findings(ctx)
    log.close()
    for comm in comms:
        comm.abort()
    os._exit(0)  # skip CUDA/NCCL teardown: a peer's failure must not hang this exit


if __name__ == "__main__":
    a = sys.argv[1:]
    rank_main(a[0], a[1], int(a[2]), int(a[3]), a[4], Path(a[5]))
