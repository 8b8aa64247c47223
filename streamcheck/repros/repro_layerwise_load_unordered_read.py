"""The forward reads a layer's KV before the layer-wise load that fills it has finished.

A layer-wise KV load (SGLang's HiCache load-back) copies each layer's cached KV from the host
on a transfer stream and records one event per layer; every reader of a layer's buffers must
make the compute stream wait on that layer's event first. One reader path that skips the wait
(SGLang's NSA indexer fetched its index buffers without it) reads the layer while the copy is
still in flight: garbled output at a rate of a few in ten thousand.

buggy: the skipping reader sees the layer before the load filled it.
fixed: the reader makes the compute stream wait on the layer's load event first.
guarded: the load declares its write (``streamcheck.launch(..., writes=[layer])``) and the
reader declares its read (``streamcheck.launch(..., reads=[layer])``): ``unsynced-handoff``
stops the read before it is issued.
"""

from __future__ import annotations

import streamcheck
from streamcheck.repro.context import RankContext
from streamcheck.repro.spec import Expectation, PublicReport, ReproSpec

SPEC = ReproSpec(
    name="repro_layerwise_load_unordered_read",
    hazard="unsynced-handoff",
    summary="a reader on the compute stream skips the per-layer load event and reads a layer "
            "the transfer stream is still filling -> it sees the layer before it is loaded",
    expect={
        "buggy": Expectation(symptom=("nan", "wrong")),
        "fixed": Expectation(clean=True),
        "guarded": Expectation(blocked=("unsynced-handoff",)),
    },
    min_gpus=1,
    max_world=1,
    reports=(
        PublicReport("sgl-project/sglang#22811",
                     "https://github.com/sgl-project/sglang/pull/22811",
                     title="Fix for the low-probability garbled output issue in the GLM-5 "
                           "series models",
                     fix="https://github.com/sgl-project/sglang/pull/22811"),
    ),
    mechanism=(
        "Read-after-write on the load path. HiCache's layer-wise load-back writes layer l's "
        "KV on the host-to-device stream and records load_events[l]; readers on the forward "
        "stream call layer_transfer_counter.wait_until(l), which makes the forward stream "
        "wait on that event. The NSA indexer's index-buffer accessors skipped wait_until, so "
        "the indexer could read layer l while its copy was in flight (garbled output, a few "
        "in ten thousand, with GLM-5 and L2 HiCache). The fix (#22811) adds the wait to "
        "those accessors."
    ),
)

LAYERS = 4


def run_rank(ctx: RankContext) -> None:
    api = ctx.api
    n = ctx.pick(cuda=2048, sim=8)
    w = ctx.randn(n, n, scale=n ** -0.5)
    x = ctx.randn(n, n)
    host = ctx.randn(n, n)  # the cached layers' KV, staged on the device (the H2D source)
    api.synchronize()
    compute = api.Stream()
    api.set_stream(compute)

    transfer = api.Stream()  # the host-to-device stream
    expected = host.sum().item()
    for i in range(ctx.iterations):
        layers = [ctx.poisoned_like(x) for _ in range(LAYERS)]  # fresh pages for this request
        loaded = []
        with api.stream(transfer):
            for layer in layers:
                y = host
                for _ in range(2):
                    y = (y @ w) * 0.0 + host  # a slow copy: same values, more time in flight
                with streamcheck.launch("hicache.load_layer", stream=transfer,
                                        device=ctx.device, writes=[layer]):
                    layer.copy_(y, non_blocking=True)
                event = api.Event()
                event.record()
                loaded.append(event)
        nan = wrong = False
        for index, layer in enumerate(layers):
            if ctx.variant == "fixed" or index % 2 == 0:
                compute.wait_event(loaded[index])  # layer_transfer_counter.wait_until(index)
            # odd layers: the indexer's accessor that skips the wait (the bug)
            with streamcheck.launch("nsa.indexer", stream=compute, device=ctx.device,
                                    reads=[layer]):
                value = (layer * 1.0).sum()
            got = value.item()
            if got != got:
                nan = True
            elif abs(got - expected) > 1e-3 * max(1.0, abs(expected)):
                wrong = True
        ctx.count("nan_iters", int(nan))  # iterations with a layer read before its load
        ctx.count("wrong_iters", int(wrong and not nan))
        api.synchronize(ctx.device)
        ctx.iteration_done(i)
