"""A connector sets the wrong current device under the engine: its next event record fails.

A data-parallel deployment gives each engine process one GPU, at an offset
(``dp_rank * tp_size + tp_rank``). A KV connector initialised inside that process calls
``set_device(local_worker_id)`` with the tensor-parallel rank alone, so every DP rank but the
first moves the process's current device to another GPU. The engine's per-step event, bound
to its own GPU at its first record, is then recorded on the current stream of the new device,
and PyTorch refuses: ``Event device index 1 does not match recording stream's device index 0``
— the server dies during warm-up.

buggy: rank 1's next event record raises; rank 0 (offset 0) is unaffected.
fixed: the connector sets the device with the data-parallel offset (the engine's own).
guarded: ``event-device-mismatch`` stops the record before PyTorch raises, naming the
``set_device`` call that moved the thread.
"""

from __future__ import annotations

from streamcheck.core.errors import StreamHazardError
from streamcheck.repro.context import RankContext
from streamcheck.repro.spec import Expectation, PublicReport, ReproSpec

SPEC = ReproSpec(
    name="repro_event_device_changed",
    hazard="event-device-mismatch",
    summary="a connector's set_device(local_worker_id) ignores the data-parallel offset; the "
            "engine's per-step event is then recorded on another device's stream -> error",
    expect={
        "buggy": Expectation(symptom=("event-device-error",)),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("event-device-mismatch",)),
    },
    min_gpus=2,
    max_world=2,
    reports=(
        PublicReport("LMCache/LMCache#3493", "https://github.com/LMCache/LMCache/issues/3493",
                     title="LMCacheConnectorV1 fails to start with vLLM V1 DP+EP due to CUDA "
                           "device/stream mismatch"),
    ),
    mechanism=(
        "A wrong set_device under an engine's events. With vLLM V1 at DP=4, EP=4, TP=1 each "
        "worker owns one GPU at a data-parallel offset; LMCache's GPU connector called "
        "torch_dev.set_device(local_worker_id), an index that ignores that offset, after vLLM "
        "had created (and recorded) its per-worker events. vLLM's async scheduling then "
        "recorded prepare_inputs_event on the current stream, now on another device: "
        "'RuntimeError: Event device index 2 does not match recording stream's device index' "
        "on every DP rank but the first, during warm-up. The issue was closed as stale with "
        "no linked fix; a later LMCache PR (#3268, closed) computed the offset the way vLLM "
        "does, which is this repro's fixed variant."
    ),
)

TP_SIZE = 1  # data-parallel ranks of one GPU each: the device is dp_rank * TP_SIZE + tp_rank


def run_rank(ctx: RankContext) -> None:
    api = ctx.api
    n = ctx.pick(cuda=1024, sim=8)
    w = ctx.randn(n, n, scale=n ** -0.5)
    x = ctx.randn(n, n)
    api.synchronize()
    compute = api.Stream()
    api.set_stream(compute)
    prepare_inputs_event = api.Event()  # created by the engine, bound at its first record
    tp_rank, dp_rank = 0, ctx.rank
    for i in range(ctx.iterations):
        if i == 1:  # the KV connector initialises inside the running worker
            local_worker_id = tp_rank if ctx.variant != "fixed" else dp_rank * TP_SIZE + tp_rank
            api.set_device(local_worker_id)
        x = (x @ w).tanh()
        try:
            prepare_inputs_event.record()  # the engine's async scheduling, every step
        except StreamHazardError:
            raise
        except RuntimeError as exc:
            if "does not match recording stream's device" not in str(exc):
                raise
            ctx.count("event_device_error")
            ctx.note(error=str(exc)[:200])
            ctx.iteration_done(i)
            return  # the worker dies here
        prepare_inputs_event.synchronize()
        ctx.iteration_done(i)
