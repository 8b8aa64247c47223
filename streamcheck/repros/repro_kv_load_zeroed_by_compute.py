"""A KV load into a fresh block is wiped by the zeroing the compute stream still has queued.

Models with state that must start at zero (vLLM's hybrid/Mamba layers) zero freshly allocated
KV blocks on the compute stream, as part of a step. With asynchronous scheduling that step can
still be queued when the connector loads a cache hit into the same block on its own stream.
Nothing orders the load after the zeroing: if the copy lands first, the zeroing that follows
wipes it, and the request attends over zeros for its whole cached prefix: no error, just
degraded output.

buggy: the block holds zeros after the load instead of the loaded KV.
fixed: the load stream waits on an event recorded on the compute stream after the zeroing.
guarded: the engine declares the zeroing as a write (``streamcheck.handoff(block)``) and the
load declares its own (``streamcheck.launch(..., writes=[block])``): ``write-after-write``
stops the copy before it is issued.
"""

from __future__ import annotations

import streamcheck
from streamcheck.repro.context import RankContext
from streamcheck.repro.scenarios import KVLoads
from streamcheck.repro.spec import Expectation, PublicReport, ReproSpec

SPEC = ReproSpec(
    name="repro_kv_load_zeroed_by_compute",
    hazard="write-after-write",
    summary="a KV load into a fresh block runs before the compute stream's queued zeroing of "
            "that block -> the loaded prefix is silently zeroed",
    expect={
        "buggy": Expectation(symptom=("lost-load",)),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("write-after-write",)),
    },
    min_gpus=1,
    max_world=1,
    reports=(
        PublicReport("vllm-project/vllm#50696", "https://github.com/vllm-project/vllm/pull/50696",
                     title="[KV offload] Order CPU->GPU loads against the compute stream",
                     fix="https://github.com/vllm-project/vllm/pull/50696"),
        PublicReport("sgl-project/sglang#36738",
                     "https://github.com/sgl-project/sglang/pull/36738",
                     title="[HiCache] Fence load-back behind the forward stream",
                     fix="https://github.com/sgl-project/sglang/pull/36738"),
    ),
    mechanism=(
        "Write-after-write on a fresh KV block. The compute stream zeroes block B (hybrid "
        "models zero newly allocated blocks; the zero list ships with a step) while the "
        "offloading connector copies a cache hit into B on its own stream. Loads waited on "
        "the compute stream only for GPU->CPU transfers, so with async scheduling the load "
        "can land before the zeroing still queued on the compute stream, which then wipes "
        "it. The fix (merged in #50696) makes CPU->GPU loads wait on the compute stream too. "
        "SGLang's HiCache had the same write-write race between an earlier round's in-flight "
        "writes to freed pages and the load-back H2D into them (#36738: the transfer stream "
        "now waits on the forward stream before the load's copies)."
    ),
)

LOADED = 3.0


def run_rank(ctx: RankContext) -> None:
    api = ctx.api
    kv = KVLoads(ctx, LOADED)
    size = kv.n * kv.n
    for i in range(ctx.iterations):
        block = kv.cache[i % 2]
        kv.forward()
        block.fill_(0.0)  # the step's zeroing of the freshly allocated block
        streamcheck.handoff(block)  # what the engine declares it queued: a write
        zeroed = api.Event()
        zeroed.record()
        done = kv.load(block, after=zeroed)  # the connector loads the cache hit into it
        api.synchronize(ctx.device)  # the step ends: the host waits for every stream
        kv.compute.wait_event(done)  # the request's attention runs after its load
        value = block.sum().item()
        if abs(value - LOADED * size) > 1e-3 * LOADED * size:
            ctx.count("lost_load")
        ctx.iteration_done(i)
