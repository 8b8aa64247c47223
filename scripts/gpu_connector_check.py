"""On real GPUs: TP loop (forward + all-reduce) while the connector saves and reloads KV.

Each rank (one process per GPU) runs 20 steps of 4 layers: the forward writes new KV blocks
on the compute stream and all-reduces its activations through our NCCL binding; the connector
saves each layer's new blocks (host backend) and reloads the previous step's blocks into spare
blocks, concurrently, on its own thread and stream. Under ``assert`` mode:
* clean: reloaded blocks must equal the saved ones bit for bit, all-reduce results exact, no
  NaN, zero findings;
* injected: the legacy module-global current-stream cache is installed, so the connector
  thread's ``with torch.cuda.stream(S)`` leaks into the engine's all-reduce: assert mode must
  stop it (StreamHazardError) before the launch, with no NaN before that.
Prints one JSON line per rank and scenario; exit 1 if an expectation fails.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.multiprocessing as mp
from _ranks import run_ranks

import streamcheck
from streamcheck.connector.backends import HostBackend
from streamcheck.connector.worker_side import ConnectorRuntime
from streamcheck.repro.patterns import GlobalStreamCache
from streamcheck.runtime.nccl import NcclCommunicator, unique_id

LAYERS, STEPS, NEW_BLOCKS = 4, 20, 16
BLOCK = (2, 16, 8, 128)  # k/v, tokens, heads, head dim in bf16: 64 KiB


def scenario(rank: int, world: int, uid: bytes, injected: bool) -> dict:
    torch.cuda.set_device(rank)
    auditor = streamcheck.install("assert")
    cache = GlobalStreamCache(torch.cuda) if injected else None
    accessor = cache.current_stream if cache is not None else torch.cuda.current_stream
    if injected:
        # each rank alone: a launch stopped on one rank must not leave a peer in NCCL
        world, rank_in_comm, uid = 1, 0, unique_id()
    else:
        rank_in_comm = rank
    comm = NcclCommunicator(world, rank_in_comm, uid, rank, current_stream=accessor)
    num_blocks = STEPS * NEW_BLOCKS * 2
    kv = [torch.zeros(num_blocks, *BLOCK, dtype=torch.bfloat16, device="cuda")
          for _ in range(LAYERS)]
    nbytes = kv[0][0].numel() * kv[0].element_size()
    backend = HostBackend(capacity_blocks=LAYERS * STEPS * NEW_BLOCKS + 8, block_nbytes=nbytes,
                          pin_memory=True)
    rt = ConnectorRuntime(backend, kv, torch.device("cuda", rank), staging_blocks=64)
    torch.manual_seed(0)
    w = torch.randn(4096, 4096, device="cuda") / 64
    x = torch.randn(64, 4096, device="cuda")
    out = {"rank": rank, "injected": injected, "nan": 0, "wrong": 0, "stopped": None,
           "steps": 0}
    compute = torch.cuda.Stream()
    try:
        with torch.cuda.stream(compute):
            for step in range(STEPS):
                ids = list(range(step * NEW_BLOCKS, (step + 1) * NEW_BLOCKS))
                for layer in range(LAYERS):
                    y = torch.tanh(x @ w)
                    kv[layer][ids] = torch.randn(len(ids), *BLOCK, device="cuda").to(
                        torch.bfloat16)  # the attention writes this step's KV
                    rt.save_layer(f"s{step}", layer, ids, [f"r{rank}s{step}b{b}L{layer}"
                                                           for b in ids])
                    expected = y * world
                    comm.all_reduce(y, y)
                    bad = torch.isnan(y).any().item()
                    out["nan"] += int(bad)
                    out["wrong"] += int(not bad and not torch.equal(y, expected))
                rt.seal([f"s{step}"])  # every layer of this step's save group is queued
                if step:
                    prev = list(range((step - 1) * NEW_BLOCKS, step * NEW_BLOCKS))
                    spare = [num_blocks // 2 + b for b in prev]
                    rt.start_load(f"l{step}", {layer: (spare, [f"r{rank}s{step - 1}b{b}L{layer}"
                                                               for b in prev])
                                               for layer in range(LAYERS)})
                out["steps"] = step + 1
    except streamcheck.StreamHazardError as exc:
        out["stopped"] = exc.rule_ids
    torch.cuda.synchronize()
    news = rt.poll()
    while rt.pending():
        news.merge(rt.poll())
    news.merge(rt.poll())
    failed = news.failed_load_blocks
    torch.cuda.synchronize()
    rt.wait_for_loads()
    torch.cuda.synchronize()
    mismatched = 0
    for step in range(1, out["steps"]):
        prev = list(range((step - 1) * NEW_BLOCKS, step * NEW_BLOCKS))
        spare = [num_blocks // 2 + b for b in prev]
        for layer in range(LAYERS):
            mismatched += int(not torch.equal(kv[layer][spare], kv[layer][prev]))
    out.update(failed_load_blocks=len(failed), roundtrip_mismatches=mismatched,
               save_groups_ok=len(news.saves_ok), save_groups_failed=sorted(news.saves_failed),
               findings=sorted({f.rule_id for f in auditor.findings()}),
               metrics=rt.metrics.snapshot(), launches_audited=auditor.launches)
    rt.shutdown()
    comm.close()
    if cache is not None:
        cache.remove()
    streamcheck.uninstall()
    return out


def rank_main(rank: int, world: int, uids: list, queue: mp.Queue) -> None:
    for injected, uid in ((False, uids[0]), (True, b"")):
        try:
            queue.put(scenario(rank, world, uid, injected))
        except Exception as exc:
            queue.put({"rank": rank, "injected": injected, "error": repr(exc)})


def main() -> int:
    world = torch.cuda.device_count()
    if world < 1:
        print("needs a CUDA GPU")
        return 2
    results = run_ranks(rank_main, world, ([unique_id()],), expected=2 * world, timeout=400)
    ok = True
    for r in sorted(results, key=lambda r: (r["injected"], r["rank"])):
        print(json.dumps(r))
        if "error" in r:
            ok = False
        elif not r["injected"]:
            ok &= (r["nan"] == r["wrong"] == r["roundtrip_mismatches"] == 0
                   and not r["findings"] and r["stopped"] is None and r["steps"] == STEPS
                   and r["failed_load_blocks"] == 0 and r["save_groups_ok"] == STEPS
                   and not r["save_groups_failed"])
        else:
            ok &= r["nan"] == 0 and r["stopped"] is not None
    print("connector TP check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
