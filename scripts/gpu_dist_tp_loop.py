"""On real GPUs: a TP loop through torch.distributed NCCL, audited in assert mode.

Two scenarios, each on every rank (one process per GPU):
* clean: forward + dist.all_reduce, no connector;
* leak: the same, with a connector thread holding ``with torch.cuda.stream(S)`` and the legacy
  module-global cache installed. ProcessGroupNCCL reads the thread's real current stream in
  C++, so the leak cannot misroute these launches: results must be exact and findings zero.
Prints one JSON line per rank and scenario; exits 1 if any result is wrong or any finding is
reported.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _ranks import run_ranks

import streamcheck
from streamcheck.repro.actors import ConnectorThread
from streamcheck.repro.patterns import GlobalStreamCache


def rank_main(rank: int, world: int, port: int, queue: mp.Queue) -> None:
    torch.cuda.set_device(rank)
    auditor = streamcheck.install("assert")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world,
                            device_id=torch.device("cuda", rank))
    torch.manual_seed(0)
    w = torch.randn(4096, 4096, device="cuda") / 64
    x = torch.randn(64, 4096, device="cuda")
    for scenario in ("clean", "leak"):
        cache = connector = None
        if scenario == "leak":
            cache = GlobalStreamCache(torch.cuda)
            side = torch.cuda.Stream()
            connector = ConnectorThread(torch.cuda, lambda side=side: side)
            connector.start()
        wrong = nan = 0
        error = ""
        try:
            for _ in range(30):
                y = torch.tanh(x @ w)
                expected = y * world
                dist.all_reduce(y)
                if torch.isnan(y).any().item():
                    nan += 1
                elif not torch.allclose(y, expected, rtol=1e-5, atol=1e-5):
                    wrong += 1
            torch.cuda.synchronize()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if connector is not None:
                connector.stop()
            if cache is not None:
                cache.remove()
        findings = sorted({f.rule_id for f in auditor.findings()})
        queue.put({"rank": rank, "scenario": scenario, "iterations": 30, "nan": nan,
                   "wrong": wrong, "error": error, "findings": findings,
                   "launches_audited": auditor.launches})
        auditor.clear()
    dist.destroy_process_group()


def main() -> int:
    world = torch.cuda.device_count()
    if world < 1:
        print("needs a CUDA GPU")
        return 2
    results = run_ranks(rank_main, world, (29611,), expected=2 * world, timeout=300)
    ok = True
    for r in sorted(results, key=lambda r: (r["scenario"], r["rank"])):
        print(json.dumps(r))
        ok &= not (r["nan"] or r["wrong"] or r["error"] or r["findings"])
        ok &= r["launches_audited"] >= 30
    print("torch.distributed TP loop:", "PASS (exact, zero findings)" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
