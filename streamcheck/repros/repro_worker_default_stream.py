"""A helper thread left on the legacy default stream reads what the engine computes elsewhere.

The engine computes KV on its own stream (as vLLM does, never on the default stream) and hands
the tensor to a save thread. A new thread starts on the legacy default stream, and PyTorch's
streams are created non-blocking, so nothing orders the helper's copy after the engine's
compute: the saved blocks differ from what the forward wrote (here: NaN-poisoned memory).

buggy: saved blocks differ from the engine's final values.
fixed: the helper makes its own stream on the rank's device and waits on an event the engine
records after the compute.
guarded: the save is declared with ``streamcheck.launch(...)``; ``default-stream-in-worker``
stops it before the copy is issued.
"""

from __future__ import annotations

import streamcheck
from streamcheck.repro.actors import run_in_thread
from streamcheck.repro.context import RankContext
from streamcheck.repro.scenarios import EngineKV
from streamcheck.repro.spec import Expectation, PublicReport, ReproSpec

SPEC = ReproSpec(
    name="repro_worker_default_stream",
    hazard="default-stream-in-worker",
    summary="engine computes KV on its own stream; a save thread copies it from the legacy "
            "default stream with no ordering -> saved KV differs from the forward's",
    expect={
        "buggy": Expectation(symptom=("corrupt-save",)),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("default-stream-in-worker",)),
    },
    min_gpus=1,
    max_world=1,
    reports=(
        PublicReport("ndif-team/nnsight#631", "https://github.com/ndif-team/nnsight/issues/631",
                     title="Different outputs when changing tensor_parallel_size from 1 to 2",
                     fix="https://github.com/ndif-team/nnsight/pull/638"),
    ),
    mechanism=(
        "A worker thread on the legacy default stream reads what the engine computes on its "
        "own non-blocking stream. nnsight ran user interventions on mediator threads, which "
        "start on the NULL stream, while vLLM's forward ran on a pool stream created "
        "non-blocking: the workers' clone/fill raced the forward's writes, and results at "
        "TP=2 differed from TP=1, non-deterministically (head-ablation values ranging "
        "9.6-18.5 in the maintainers' runs). The fix (#638) hands the caller's stream to each "
        "worker thread (set_stream on entry); this repro's fixed variant orders the worker's "
        "own stream after an event instead, which is the same edge."
    ),
)


def run_rank(ctx: RankContext) -> None:
    api = ctx.api
    engine = EngineKV(ctx)
    for i in range(ctx.iterations):
        kv = engine.next()
        done = api.Event()
        done.record()

        def save(kv=kv, done=done):
            if ctx.variant == "fixed":
                api.set_device(ctx.device)
                stream = api.Stream()
                with api.stream(stream):
                    stream.wait_event(done)
                    saved = kv.clone()
                    return saved, (saved * 1).sum().item()
            with streamcheck.launch("kv.save", stream=api.current_stream(ctx.device),
                                    device=ctx.device):
                saved = kv.clone()
            return saved, (saved * 1).sum().item()

        saved, _ = run_in_thread(save, name="kv-saver")
        engine.check_saved(saved, kv)
        ctx.iteration_done(i)
