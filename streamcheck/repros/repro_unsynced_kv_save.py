"""A connector saves KV blocks on its own stream without waiting for the compute that wrote them.

The connector does most things right: its worker thread calls ``set_device``, owns a stream on
the rank's device, and copies the layer's KV out when ``save_kv_layer`` hands it over. But the
copy is queued without ``wait_event`` on an event recorded by the engine after the forward
wrote the KV, so it can run while the forward is still writing: the saved blocks differ from
the KV the model produced (here NaN-poisoned until written).

buggy: saved blocks differ from the engine's final KV.
fixed: the engine records an event at the handoff; the save stream waits on it first.
guarded: the save is declared with ``streamcheck.launch(..., reads=[kv])`` after the engine's
``streamcheck.handoff(kv)``; ``unsynced-handoff`` stops it before the copy is issued.
"""

from __future__ import annotations

import streamcheck
from streamcheck.repro.actors import run_in_thread
from streamcheck.repro.context import RankContext
from streamcheck.repro.scenarios import EngineKV
from streamcheck.repro.spec import Expectation, PublicReport, ReproSpec

SPEC = ReproSpec(
    name="repro_unsynced_kv_save",
    hazard="unsynced-handoff",
    summary="connector copies a layer's KV on its own stream without waiting on the engine's "
            "event -> saved KV differs from what the forward wrote",
    expect={
        "buggy": Expectation(symptom=("corrupt-save",)),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("unsynced-handoff",)),
    },
    min_gpus=1,
    max_world=1,
    reports=(
        PublicReport("vllm-project/vllm#45704", "https://github.com/vllm-project/vllm/issues/45704",
                     title="SimpleCPUOffloadConnector corrupts restored KV under load -> "
                           "intermittent garbled output (missing GPU->CPU store cross-stream "
                           "sync)",
                     fix="https://github.com/vllm-project/vllm/pull/46278"),
        PublicReport("vllm-project/vllm#31341", "https://github.com/vllm-project/vllm/pull/31341",
                     title="[BugFix] Wait for compute before offloading KV to CPU",
                     fix="https://github.com/vllm-project/vllm/pull/31341"),
    ),
    mechanism=(
        "Read-after-write on the store path. The forward writes a layer's KV on the compute "
        "stream; the connector later copies those blocks out on its own store stream, issued "
        "from a copy thread. The host has moved on, but no event recorded on the compute "
        "stream after the writes is waited on by the store stream (and vLLM's descriptors "
        "used srcAccessOrder=ANY), so the copy can read blocks the forward has not finished: "
        "the saved KV is corrupt and shows up later as garbled output when it is loaded back "
        "(the report: 150/150 iterations corrupt in its copy-primitive test). #46278 records "
        "a compute-done event and makes the store stream wait on it; #31341 fixed the same "
        "hazard in the OffloadingConnector with wait_stream. Here the copy goes to device "
        "memory rather than pinned host memory: the ordering at fault is the same."
    ),
)


def run_rank(ctx: RankContext) -> None:
    api = ctx.api
    engine = EngineKV(ctx)

    def make_save_stream():
        api.set_device(ctx.device)  # done right: the connector's stream is on the rank's device
        return api.Stream()

    save_stream = run_in_thread(make_save_stream, name="kv-connector")
    for i in range(ctx.iterations):
        kv = engine.next()  # the forward writes this layer's KV on the engine stream
        streamcheck.handoff(kv)  # what save_kv_layer(kv) declares
        written = api.Event()
        written.record()

        def save(kv=kv, written=written):
            api.set_device(ctx.device)
            with api.stream(save_stream):
                if ctx.variant == "fixed":
                    save_stream.wait_event(written)
                with streamcheck.launch("kv.save", stream=save_stream, device=ctx.device,
                                        reads=[kv]):
                    saved = kv.clone()
                done = api.Event()
                done.record()
            return saved, done

        saved, done = run_in_thread(save, name="kv-connector")
        done.wait()  # the engine waits for the save before reusing anything
        engine.check_saved(saved, kv)
        ctx.iteration_done(i)
