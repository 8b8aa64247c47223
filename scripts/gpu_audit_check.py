"""Check the audit on a real GPU: a connector thread's stream context feeding a global cache.

Runs in one process with a one-rank NCCL communicator (our ctypes binding):
1. record mode, leaking global cache: every all-reduce is reported as ``foreign-stream``;
2. assert mode, same: StreamHazardError on the first all-reduce, and NCCL was never called;
3. clean (communicator reads the thread's real current stream): no finding;
4. with 2+ GPUs: engine on cuda:1, connector creates S in a fresh thread (cuda:0):
   assert mode raises ``device-mismatch`` before the launch.
Prints one JSON line per check and exits 1 if any check did not hold.
"""

from __future__ import annotations

import json
import sys

import torch

import streamcheck
from streamcheck.repro.actors import ConnectorThread
from streamcheck.repro.patterns import GlobalStreamCache
from streamcheck.runtime.nccl import NcclCommunicator, unique_id


def leak_run(mode: str, device: int, leak: bool, stream_in_thread: bool,
             iterations: int = 10) -> dict:
    torch.cuda.set_device(device)
    auditor = streamcheck.install(mode)
    cache = GlobalStreamCache(torch.cuda) if leak else None
    accessor = cache.current_stream if cache is not None else torch.cuda.current_stream
    comm = NcclCommunicator(1, 0, unique_id(), device, current_stream=accessor)
    side = None if stream_in_thread else torch.cuda.Stream()
    connector = ConnectorThread(torch.cuda, torch.cuda.Stream if stream_in_thread else lambda: side)
    connector.start()
    raised: list[str] = []
    nan = 0
    try:
        x = torch.randn(64, 4096, device=device)
        w = torch.randn(4096, 4096, device=device) / 64
        for _ in range(iterations):
            y = torch.tanh(x @ w)
            out = torch.empty_like(y).fill_(float("nan"))
            try:
                comm.all_reduce(y, out)
            except streamcheck.StreamHazardError as exc:
                raised = exc.rule_ids
                break
            nan += int(torch.isnan(out * 2).any().item())
        torch.cuda.synchronize()
    finally:
        connector.stop()
        if cache is not None:
            cache.remove()
        findings = sorted({f.rule_id for f in auditor.findings()}) if auditor else []
        launches = comm.launches
        comm.close()
        streamcheck.uninstall()
    return {"mode": mode, "device": device, "leak": leak, "stream_in_thread": stream_in_thread,
            "raised": raised, "findings": findings, "nccl_launches": launches, "nan_iters": nan}


def main() -> int:
    checks = []
    r = leak_run("record", 0, leak=True, stream_in_thread=False)
    checks.append(("record reports foreign-stream", r, r["findings"] == ["foreign-stream"]))
    r = leak_run("assert", 0, leak=True, stream_in_thread=False)
    checks.append(("assert stops before launch", r,
                   r["raised"] == ["foreign-stream"] and r["nccl_launches"] == 0
                   and r["nan_iters"] == 0))
    r = leak_run("record", 0, leak=False, stream_in_thread=False)
    checks.append(("clean run: no finding", r, r["findings"] == [] and r["nan_iters"] == 0))
    if torch.cuda.device_count() >= 2:
        r = leak_run("assert", 1, leak=True, stream_in_thread=True)
        checks.append(("device-mismatch before launch on cuda:1", r,
                       "device-mismatch" in r["raised"] and r["nccl_launches"] == 0))
    else:
        print(json.dumps({"check": "device-mismatch on cuda:1", "skipped": "needs 2 GPUs"}))
    ok = True
    for name, result, held in checks:
        ok &= held
        print(json.dumps({"check": name, "held": held, **result}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
