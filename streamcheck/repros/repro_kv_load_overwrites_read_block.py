"""A KV load writes a reused block while attention on the compute stream is still reading it.

The scheduler runs ahead of the GPU: when a request finishes, its KV blocks go back to the
free list as soon as the CPU has *queued* the last attention that reads them, and the next
request that gets one of those blocks has its cached KV loaded into it by the connector, on the
connector's own stream. Nothing orders that copy after the compute stream's attention: the
load lands while the old request's attention is still queued behind the forward, and the
attention reads the new request's KV instead of its own.

buggy: the old request's attention output is computed from the loaded (new) KV.
fixed: the engine records an event on the compute stream after queueing the attention that
reads the block; the load stream waits on it before the copy.
guarded: the engine declares the read (``streamcheck.handoff(block, access="read")``) and the
load declares its write (``streamcheck.launch(..., writes=[block])``): ``write-after-read``
stops the copy before it is issued.
"""

from __future__ import annotations

import streamcheck
from streamcheck.repro.context import RankContext
from streamcheck.repro.scenarios import KVLoads
from streamcheck.repro.spec import Expectation, PublicReport, ReproSpec

SPEC = ReproSpec(
    name="repro_kv_load_overwrites_read_block",
    hazard="write-after-read",
    summary="a KV load on the connector's stream writes a freed-and-reused block while the "
            "compute stream's attention still reads it -> attention reads another request's KV",
    expect={
        "buggy": Expectation(symptom=("overwritten-read",)),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("write-after-read",)),
    },
    min_gpus=1,
    max_world=1,
    reports=(
        PublicReport("vllm-project/vllm#47282", "https://github.com/vllm-project/vllm/issues/47282",
                     title="SimpleCPUOffload: residual output garbling under high concurrency - "
                           "load path lacks cross-stream sync with compute (WAR)",
                     fix="https://github.com/vllm-project/vllm/pull/47324"),
    ),
    mechanism=(
        "Write-after-read on a KV block. The compute stream has queued attention that reads "
        "block B for request A; the scheduler, already past that step on the CPU, frees B and "
        "hands it to request C, whose cached KV the connector copies into B on its load "
        "stream. The copy waits for nothing recorded on the compute stream, so it can run "
        "before A's attention: A reads C's KV (the report: 4.3% of completions garbled under "
        "high concurrency, 0% with the fix). The proposed fix (#47324, with #47291 and #50863 "
        "closed in its favour) records one compute-done event per step and makes the load "
        "stream wait on it, as stores already did after #46278."
    ),
)

OLD, NEW = 1.0, 3.0  # request A's KV in the block, and request C's loaded KV


def run_rank(ctx: RankContext) -> None:
    api = ctx.api
    kv = KVLoads(ctx, NEW)
    for i in range(ctx.iterations):
        block = kv.cache[i % 2]
        block.fill_(OLD)  # request A's KV, written by its earlier steps
        api.synchronize(ctx.device)
        y = kv.forward()
        attention = ((y * 0.0) + block).sum()  # A's attention reads the block after it
        streamcheck.handoff(block, access="read")  # what the engine declares it queued
        read_done = api.Event()
        read_done.record()
        # The block was freed when A's last step was queued and is now C's: C's KV is loaded.
        done = kv.load(block, after=read_done)
        done.wait()
        api.synchronize(ctx.device)  # the step ends: the host waits for every stream
        value = attention.item()
        expected = OLD * kv.n * kv.n
        if abs(value - expected) > 1e-3 * expected:
            ctx.count("overwritten_read")
        ctx.iteration_done(i)
