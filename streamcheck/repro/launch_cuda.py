"""One rank of a variant on real GPUs: ``python -m streamcheck.repro.launch_cuda REPRO VARIANT
RANK WORLD OUT_DIR``.

The runner starts one such process per rank in a process group it kills on a timeout. The ranks
meet through ``OUT_DIR/nccl-unique-id.json``: rank 0 makes the NCCL unique id (so NCCL's
bootstrap root lives in rank 0 and dies with the variant) and the others read it there
(:func:`shared_unique_id`). Each rank loads the repro module once, runs ``run_rank`` on
``cuda:RANK`` and writes its records to ``OUT_DIR/rank{RANK}.jsonl``.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from streamcheck.repro.context import RankContext
from streamcheck.repro.execute import execute_rank, log_findings
from streamcheck.repro.records import ResultLog, record_path
from streamcheck.runtime.procgroup import rendezvous

ENV_ENGINE = "STREAMCHECK_REPRO_ENGINE"
UID_FILE = "nccl-unique-id.json"
#: how long ranks other than 0 wait for rank 0's unique id (its start-up: torch, CUDA, NCCL)
UID_WAIT_S = 60.0


def shared_unique_id(out_dir: Path, rank: int, make: Callable[[], bytes] | None = None,
                     timeout: float = UID_WAIT_S) -> bytes:
    """The variant's NCCL unique id: rank 0 makes it (``make``, by default ncclGetUniqueId)
    and publishes it in ``out_dir``; every other rank waits for it there, at most ``timeout``
    seconds (then RendezvousError)."""
    if make is None:
        from streamcheck.runtime.nccl import unique_id as make
    return rendezvous(out_dir / UID_FILE, rank, make, timeout, what="the NCCL unique id")


def rank_main(repro_path: str, variant: str, rank: int, world_size: int,
              out_dir: Path) -> None:
    """Entry point of one rank process."""
    import torch

    from streamcheck import installer
    from streamcheck.repro.discover import load
    from streamcheck.runtime.nccl import NcclCommunicator

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks even when stuck in C
    module = load(repro_path)
    spec = module.SPEC
    torch.cuda.set_device(rank)
    torch.manual_seed(0)  # the same inputs on every rank, so results can be checked exactly
    installer.install(spec.mode_of(variant), runtime="cuda")
    device = torch.device("cuda", rank)
    log = ResultLog(record_path(out_dir, rank), rank)
    comms: list[NcclCommunicator] = []
    uid: list[bytes] = []
    uid_lock = threading.Lock()

    def nccl_id() -> bytes:
        """Met on first use, so a failure is the repro's error record, like NCCL's own."""
        with uid_lock:  # once per rank, even if communicators are made on several threads
            if not uid:
                uid.append(shared_unique_id(out_dir, rank))
            return uid[0]

    def make_comm(accessor: object) -> NcclCommunicator:
        comm = NcclCommunicator(world_size, rank, nccl_id(), rank,
                                current_stream=accessor)  # type: ignore[arg-type]
        comms.append(comm)
        return comm

    def poisoned_like(t: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(t).fill_(float("nan"))

    engine, engine_current_stream = "", None
    if os.environ.get(ENV_ENGINE) == "vllm":
        from streamcheck.repro.engine_vllm import setup

        port = 20000 + int(nccl_id()[:4].hex(), 16) % 20000
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
    rank_main(a[0], a[1], int(a[2]), int(a[3]), Path(a[4]))
