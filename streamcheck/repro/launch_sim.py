"""Run a variant on the simulator: one process, each rank a thread with its own process view.

Every rank gets its own ``SimCuda`` namespace (as each real rank has its own ``torch.cuda``
module), so a cache that patches ``set_stream`` patches that rank only; the machine, its
devices and the communicator group are shared, as on a real host.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import streamcheck
from streamcheck import installer
from streamcheck.repro.context import RankContext
from streamcheck.repro.execute import execute_rank, log_findings
from streamcheck.repro.records import ResultLog, record_path
from streamcheck.runtime.sim import SimCommGroup, SimCommunicator, SimCuda, SimMachine
from streamcheck.runtime.sim.tensor import SimTensors


def run_variant_sim(module: ModuleType, variant: str, world_size: int, out_dir: Path,
                    seed: int = 0) -> None:
    spec = module.SPEC
    installer.install(spec.mode_of(variant), runtime="sim")
    machine = SimMachine(device_count=max(world_size, 2), seed=seed)
    group = SimCommGroup(world_size)
    logs = [ResultLog(record_path(out_dir, r), r) for r in range(world_size)]
    contexts: list[RankContext] = []

    def rank_thread(rank: int) -> None:
        streamcheck.declare_thread_role(streamcheck.ENGINE)
        api = SimCuda(machine)
        installer.instrument_sim(api)
        api.set_device(rank)
        tensors = SimTensors(machine, seed=seed)  # same inputs on every rank, as with one seed

        def make_comm(accessor: Any) -> SimCommunicator:
            return SimCommunicator(group, rank, rank, machine, current_stream=accessor)

        ctx = RankContext(
            repro=spec.name, variant=variant, backend="sim", rank=rank, world_size=world_size,
            iterations=spec.iterations["sim"], api=api, device=rank, log=logs[rank],
            randn=lambda *shape, scale=1.0: tensors.randn(*shape, scale=scale, device=rank),
            poisoned_like=tensors.empty_like, make_communicator=make_comm,
        )
        contexts.append(ctx)
        execute_rank(module, ctx)

    threads = [threading.Thread(target=rank_thread, args=(r,), name=f"rank{r}", daemon=True)
               for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # a rank stuck in a collective keeps us here until the runner's timeout
    for ctx in contexts:
        log_findings(ctx)
    for log in logs:
        log.close()
