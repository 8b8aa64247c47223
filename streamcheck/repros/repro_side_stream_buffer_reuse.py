"""A buffer used on a side stream is freed without ``record_stream``: the caching allocator
hands its memory out again while the side stream's queued work still reads it.

PyTorch's caching allocator ties a block to the stream it was allocated on. When the last
Python reference goes, the block returns to that stream's pool at once: queued work on *that*
stream is ordered before any reuse, but work queued on another stream is not, unless
``tensor.record_stream(other)`` told the allocator about it. DeepSpeed's overlap-comm path
all-reduced and copied bucket buffers on its reduction stream; the buffers were allocated on
the compute stream and dropped right after the copies were queued, so the next allocation on
the compute stream could take the same memory and overwrite it under the copy.

buggy: the side stream's result is computed from the new owner's data (NaN here).
fixed: ``buf.record_stream(side)`` before dropping it: the allocator waits for the side
stream's work before it reuses the block.
guarded: the side stream's read is declared (``streamcheck.launch(..., reads=[buf])``) and so
is the new owner's first write (``writes=[fresh]``): the reused address is a
``write-after-read``, stopped before the write.

On CUDA the real caching allocator does the reuse. The simulator has no allocator: there the
repro hands the dropped buffer out again itself, as the allocator would, unless it was
recorded on the side stream.
"""

from __future__ import annotations

from typing import Any

import streamcheck
from streamcheck.repro.context import RankContext
from streamcheck.repro.spec import Expectation, PublicReport, ReproSpec

SPEC = ReproSpec(
    name="repro_side_stream_buffer_reuse",
    hazard="write-after-read",
    summary="a bucket buffer read on the reduction stream is freed without record_stream; "
            "the allocator reuses it on the compute stream under the read -> NaN",
    expect={
        "buggy": Expectation(symptom=("nan", "wrong")),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("write-after-read",)),
    },
    min_gpus=1,
    max_world=1,
    reports=(
        PublicReport("deepspeedai/DeepSpeed#7965",
                     "https://github.com/deepspeedai/DeepSpeed/pull/7965",
                     title="Fix overlap-comm buffer lifetimes",
                     fix="https://github.com/deepspeedai/DeepSpeed/pull/7965"),
    ),
    mechanism=(
        "Use after free across streams. With overlap_comm, DeepSpeed's ZeRO all-reduce and "
        "copy ran on the reduction stream over buffers allocated on (and freed from) the "
        "compute stream. The caching allocator only knows a block's allocation stream, so "
        "dropping the last reference returned the block at once, and the next allocation on "
        "the compute stream could reuse it while the reduction stream still read it: ZeRO-2's "
        "loss went 11.20 -> 11.17 -> nan. The fix (#7965) calls record_stream(reduction_stream) "
        "on the buffers."
    ),
)


class _SimAllocator:
    """What the caching allocator does, for the simulator: a dropped block is handed out again
    to the next allocation of its size, unless a stream it was recorded on still uses it."""

    def __init__(self, ctx: RankContext) -> None:
        self._ctx = ctx
        self._free: list[Any] = []

    def empty_like(self, like: Any) -> Any:
        return self._free.pop() if self._free else self._ctx.poisoned_like(like)

    def drop(self, tensor: Any, recorded: bool) -> None:
        if not recorded:
            self._free.append(tensor)


def run_rank(ctx: RankContext) -> None:
    api = ctx.api
    n = ctx.pick(cuda=4096, sim=16)
    w = ctx.randn(n, n, scale=n ** -0.5)
    x = ctx.randn(n, n)
    api.synchronize()
    compute = api.Stream()
    api.set_stream(compute)
    reduction = api.Stream()
    sim = _SimAllocator(ctx) if ctx.backend != "cuda" else None
    for i in range(ctx.iterations):
        bucket = ctx.poisoned_like(x)  # allocated on the compute stream
        bucket.copy_(x)
        reduction.wait_stream(compute)
        with api.stream(reduction):
            y = x @ w
            for _ in range(4):
                y = (y @ w).tanh()  # the all-reduce in flight: keeps the stream busy
            with streamcheck.launch("zero.allreduce_and_copy", stream=reduction,
                                    device=ctx.device, reads=[bucket]):
                reduced = (bucket * 2.0).sum()
        recorded = ctx.variant == "fixed"
        if recorded and sim is None:
            bucket.record_stream(reduction)  # the fix
        if sim is not None:
            sim.drop(bucket, recorded)
        del bucket  # the last reference: on CUDA the block goes back to the compute pool now
        fresh = sim.empty_like(x) if sim is not None else _cuda_empty_like(x)
        with streamcheck.launch("next_step.fill", stream=compute, device=ctx.device,
                                writes=[fresh]):
            fresh.fill_(float("nan"))  # the block's next owner writes it
        compute.wait_stream(reduction)
        got = reduced.item()
        expected = 2.0 * x.sum().item()
        if got != got:
            ctx.count("nan_iters")
        elif abs(got - expected) > 1e-3 * max(1.0, abs(expected)):
            ctx.count("wrong_iters")
        del fresh
        api.synchronize(ctx.device)
        ctx.iteration_done(i)


def _cuda_empty_like(like: Any) -> Any:
    """A plain allocation on the current stream (CUDA: the caching allocator decides where)."""
    import torch

    return torch.empty_like(like)
