"""A thread-local current-stream cache goes stale: the collective launches on the old stream.

The cache (vLLM >= 0.10, still in 0.33) only sees ``torch.cuda.set_stream``. The engine thread
computes inside ``with stream:`` on a ``torch.Stream``-style context, which switches streams in
C++ without calling ``set_stream``; the all-reduce's ``current_stream()`` still answers with the
stream cached before, so it runs unordered with the compute that feeds it and the op that reads
it. Measured on 2 x H200 with vLLM 0.24's real PyNcclCommunicator: wrong results in 29 of 30
iterations. Outputs are NaN-poisoned here and checked against the known sum.

buggy: NaN or wrong all-reduce results.
fixed: the communicator reads the thread's real current stream: exact results, no finding.
guarded: ``stale-stream-cache`` stops the first all-reduce before it launches.
"""

from __future__ import annotations

from streamcheck.repro.context import RankContext
from streamcheck.repro.patterns import ThreadLocalStreamCache
from streamcheck.repro.spec import Expectation, ReproSpec

SPEC = ReproSpec(
    name="repro_stale_stream_cache",
    hazard="stale-stream-cache",
    summary="thread-local cache + `with torch.Stream(...)` in the engine thread (bypasses "
            "set_stream) -> all-reduce on the stale cached stream -> wrong/NaN",
    expect={
        "buggy": Expectation(symptom=("nan", "wrong")),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("stale-stream-cache",)),
    },
    min_gpus=1,
    max_world=2,
)


def run_rank(ctx: RankContext) -> None:
    api = ctx.api
    engine = ctx.engine_current_stream
    cache = ThreadLocalStreamCache(api) if ctx.variant != "fixed" and engine is None else None
    if ctx.variant == "fixed":
        accessor = api.current_stream
    else:
        accessor = engine if engine is not None else cache.current_stream  # type: ignore[union-attr]
    explicit = engine is not None and ctx.variant == "fixed"
    try:
        comm = ctx.communicator(current_stream=accessor)
        accessor()  # the engine caches its stream at start-up, as vLLM does
        n, m = ctx.pick(cuda=4096, sim=16), ctx.pick(cuda=64, sim=4)
        w = ctx.randn(n, n, scale=n ** -0.5)
        x0 = ctx.randn(m, n)
        api.synchronize()  # inputs ready before serving starts
        compute = api.Stream()
        for i in range(ctx.iterations):
            with compute:  # torch.Stream.__enter__: a C++ switch the cache never sees
                y = x0 @ w
                for _ in range(4):
                    y = (y @ w).tanh()
                out = ctx.poisoned_like(y)
                if explicit:
                    out = comm.all_reduce(y, out, stream=api.current_stream())
                else:
                    out = comm.all_reduce(y, out)
                value = out.sum().item()
                expected = y.sum().item() * ctx.world_size  # same seed: every rank has this y
            if value != value:
                ctx.count("nan_iters")
            elif abs(value - expected) > 1e-3 * max(1.0, abs(expected)):
                ctx.count("wrong_iters")
            ctx.iteration_done(i)
        api.synchronize()
    finally:
        if cache is not None:
            cache.remove()
