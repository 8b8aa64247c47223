"""A connector thread's first ``current_stream()`` lands on cuda:0 while its rank lives on cuda:1.

vLLM >= 0.14 keeps the current-stream cache per thread, and a thread with no cached stream gets
a NEW stream created on the thread's current device. A fresh thread's current device is cuda:0
whatever the rank, so on rank 1 the connector's collective (``stream=None``, as a connector
exchanging KV metadata or blocks over NCCL does) launches on a stream of cuda:0:
``Cuda failure 400 'invalid resource handle'``. (vLLM 0.10-0.13 returned cuda:0's default
stream instead: the same wrong device.) A one-rank NCCL "all-reduce" is a plain copy, not a
kernel launch, and does not fail: the repro needs two ranks.

buggy: rank 1's connector fails with error 400; rank 0's, whose device is cuda:0, launched its
half and waits for rank 1 until killed.
fixed: the connector thread calls ``set_device(rank)`` before its first ``current_stream()``.
guarded: ``stream-on-unbound-device`` stops rank 1's connector when its first
``current_stream()`` creates the stream on cuda:0, before anything is queued on it (without
that rule, ``device-mismatch`` stops the launch on it); rank 0's half still waits for rank 1
(the audit prevents the error, it cannot tell the peer).
"""

from __future__ import annotations

from streamcheck.repro.actors import run_in_thread
from streamcheck.repro.context import RankContext
from streamcheck.repro.patterns import ThreadLocalStreamCache
from streamcheck.repro.spec import Expectation, PublicReport, ReproSpec

SPEC = ReproSpec(
    name="repro_fresh_thread_device",
    hazard="stream-on-unbound-device",
    summary="thread-local cache (vLLM >= 0.14) + connector thread without set_device: its "
            "first current_stream() is a new stream on cuda:0 -> rank 1's transfer -> error 400",
    expect={
        "buggy": Expectation(symptom=("error-400",), peers_hang=True),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("stream-on-unbound-device",), peers_hang=True,
                               tolerate=("hang",)),
    },
    min_gpus=2,
    max_world=2,
    reports=(
        PublicReport("vllm-project/vllm#39548", "https://github.com/vllm-project/vllm/pull/39548",
                     title="[Bugfix][Mooncake] Fix thread-local CUDA context for NVLink "
                           "transfers in _send_blocks",
                     fix="https://github.com/vllm-project/vllm/pull/39548"),
        PublicReport("kvcache-ai/Mooncake#2569", "https://github.com/kvcache-ai/Mooncake/pull/2569",
                     title="Infer gpu device from request source pointers, set correct device "
                           "for stream creation",
                     fix="https://github.com/kvcache-ai/Mooncake/pull/2569"),
    ),
    mechanism=(
        "A helper thread with no device set works on device 0 for every rank. vLLM's "
        "MooncakeConnector ran _send_blocks on a ThreadPoolExecutor thread, whose current "
        "device is 0 unless rebound: NVLink transfers, tied to the calling thread's device, "
        "worked on TP rank 0 and failed on ranks 1-3 (#39548 rebinds each pool thread's "
        "device). Mooncake created its transfer streams without switching to each rank's "
        "GPU, so every rank's streams lived on GPU 0 and the transfers timed out (#2569 "
        "creates them on the device that owns the request's buffers). Here the connector "
        "thread's first stream lands on cuda:0 and rank 1's NCCL launch on it fails with "
        "error 400, the same missing device binding with NCCL as the transport."
    ),
)


def run_rank(ctx: RankContext) -> None:
    api = ctx.api
    cache = ThreadLocalStreamCache(api) if ctx.engine_current_stream is None else None
    accessor = ctx.engine_current_stream or cache.current_stream  # type: ignore[union-attr]
    try:
        comm = ctx.communicator(current_stream=accessor)
        n = ctx.pick(cuda=1 << 16, sim=8)

        def connector() -> None:
            if ctx.variant == "fixed":
                api.set_device(ctx.device)
            stream = accessor()
            ctx.note(connector_stream_device=stream.device_index)
            for i in range(ctx.iterations):
                blocks = ctx.randn(n)
                out = ctx.poisoned_like(blocks)
                # stream=None: the thread's cached stream. Use the returned tensor: vLLM <= 0.9's
                # pynccl has no ``out`` parameter and returns a new one.
                out = comm.all_reduce(blocks, out)
                if stream.device_index != ctx.device:
                    ctx.count("foreign_launches")
                expected = blocks * ctx.world_size  # same seed: every rank holds these blocks
                diff = ((out * -1) + expected).sum().item()
                if diff != diff:
                    ctx.count("nan_iters")
                elif abs(diff) > 1e-3:
                    ctx.count("wrong_iters")
                ctx.iteration_done(i)
            api.synchronize(ctx.device)

        run_in_thread(connector, name="kv-connector")
    finally:
        if cache is not None:
            cache.remove()
