"""A thread's first ``current_stream()`` switches it to a fresh stream that never waited for
the work the thread had already queued.

vLLM's ``current_stream()`` accessor, on its first call in a thread, makes a new pool stream
current (``set_stream(Stream())``) so that collectives never run on the legacy default stream.
Pool streams are created non-blocking: nothing orders them with the default stream. Whatever
the thread queued before that first call (here: a tensor produced on the default stream) and
what it queues after it on the new stream are unordered, and the consumer can read the tensor
before its producer has run.

buggy: the consumer on the new stream reads the tensor before it is produced.
fixed: the accessor carries the queued work over: the new stream waits for the one it replaces
before it is made current.
guarded: the producer declares ``streamcheck.handoff(x)`` and the consumer
``streamcheck.launch(..., reads=[x])``: ``unordered-stream-switch`` (the reading stream was
created by this thread after it produced ``x``) stops the read.
"""

from __future__ import annotations

import threading
from typing import Any

import streamcheck
from streamcheck.repro.actors import run_in_thread
from streamcheck.repro.context import RankContext
from streamcheck.repro.spec import Expectation, PublicReport, ReproSpec

SPEC = ReproSpec(
    name="repro_first_current_stream_switch",
    hazard="unordered-stream-switch",
    summary="a thread's first current_stream() makes a fresh non-blocking stream current "
            "without waiting for the old one -> work after the switch reads what work before it "
            "has not produced yet",
    expect={
        "buggy": Expectation(symptom=("nan", "wrong")),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("unordered-stream-switch",)),
    },
    min_gpus=1,
    max_world=1,
    reports=(
        PublicReport("vllm-project/vllm#56382", "https://github.com/vllm-project/vllm/pull/56382",
                     title="[Bugfix] Carry over queued work when materializing the dedicated "
                           "stream",
                     fix="https://github.com/vllm-project/vllm/pull/56382"),
    ),
    mechanism=(
        "An unordered stream switch. vllm.utils.torch_utils.current_stream() is a getter that "
        "switches: on its first call in a thread it runs torch.cuda.set_stream("
        "torch.cuda.Stream()). Pool streams are cudaStreamNonBlocking, so work queued before "
        "the switch (on the default stream) and work issued after it (on the new stream) are "
        "unordered. It showed with a distributed backend that bypasses pynccl and "
        "--enforce-eager: the first call landed inside the first MoE layer of a warm-up "
        "forward, and the sequence-parallel input produced just before stayed on the old "
        "stream. The fix (#56382) makes the new stream wait for the one it replaces."
    ),
)


class LazyStreamAccessor:
    """vLLM's accessor, in the shape this report is about: per thread, and on the first call
    in a thread it makes a new stream current."""

    def __init__(self, api: Any, carry_over: bool) -> None:
        self._api = api
        self._carry_over = carry_over
        self._tls = threading.local()

    def __call__(self) -> Any:
        stream = getattr(self._tls, "value", None)
        if stream is None:
            stream = self._api.Stream()
            if self._carry_over:
                stream.wait_stream(self._api.current_stream())  # the fix
            self._api.set_stream(stream)
            self._tls.value = stream
        return stream


def run_rank(ctx: RankContext) -> None:
    api = ctx.api
    n = ctx.pick(cuda=4096, sim=16)
    w = ctx.randn(n, n, scale=n ** -0.5)
    x0 = ctx.randn(n, n)
    api.synchronize()
    current_stream = LazyStreamAccessor(api, carry_over=ctx.variant == "fixed")

    def warmup_forward() -> tuple[float, float]:
        api.set_device(ctx.device)  # a fresh worker thread, on the legacy default stream
        produced = ctx.poisoned_like(x0)
        y = x0 @ w
        for _ in range(4):
            y = (y @ w).tanh()
        produced.copy_(y)  # the input the next layer reads, queued before the switch
        streamcheck.handoff(produced)
        stream = current_stream()  # the first call in this thread: switches streams
        with streamcheck.launch("moe.shared_experts", stream=stream, device=ctx.device,
                                reads=[produced]):
            consumed = (produced * 1.0).sum()
        api.synchronize(ctx.device)
        return consumed.item(), y.sum().item()

    for i in range(ctx.iterations):
        got, expected = run_in_thread(warmup_forward, name=f"worker-{i}")
        if got != got:
            ctx.count("nan_iters")
        elif abs(got - expected) > 1e-3 * max(1.0, abs(expected)):
            ctx.count("wrong_iters")
        ctx.iteration_done(i)
