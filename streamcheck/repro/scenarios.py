"""Engine loops shared by several repros, so each repro file states only what differs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamcheck
from streamcheck.repro.actors import ConnectorThread, run_in_thread
from streamcheck.repro.context import RankContext
from streamcheck.repro.patterns import GlobalStreamCache


def leaked_stream_allreduce_loop(ctx: RankContext, stream_made_in_connector: bool) -> None:
    """Engine: forward + all-reduce via a ``current_stream()`` accessor; a connector thread holds
    ``with stream(S)`` throughout. Buggy and guarded use the module-global cache; fixed uses the
    thread's real current stream.

    ``stream_made_in_connector`` creates S inside the connector thread, which never called
    ``set_device``: S lands on device 0 whatever the rank (the error-400 variant). The fixed
    variant's connector binds its device first: a stream made on the wrong device is a bug of
    its own (``stream-on-unbound-device``) even where nothing launches on it.
    """
    api = ctx.api
    engine = ctx.engine_current_stream
    cache = GlobalStreamCache(api) if ctx.variant != "fixed" and engine is None else None
    if ctx.variant == "fixed":
        accessor: Callable[[], Any] = api.current_stream
    else:
        accessor = engine if engine is not None else cache.current_stream  # type: ignore[union-attr]
    try:
        comm = ctx.communicator(current_stream=accessor)
        # With a real engine its communicator resolves stream=None itself; the fixed variant
        # then passes the thread's real current stream explicitly.
        explicit = engine is not None and ctx.variant == "fixed"
        n, m = ctx.pick(cuda=4096, sim=16), ctx.pick(cuda=64, sim=4)
        w = ctx.randn(n, n, scale=n ** -0.5)
        x0 = ctx.randn(m, n)
        if stream_made_in_connector:
            def make_stream() -> Any:
                if ctx.variant == "fixed":
                    api.set_device(ctx.device)
                return api.Stream()

            connector = ConnectorThread(api, make_stream)
        else:
            side = api.Stream()  # made in the engine thread: on the rank's own device
            connector = ConnectorThread(api, lambda: side)
        side = connector.start()
        ctx.note(connector_stream=repr(side), connector_stream_device=side.device_index)
        try:
            for i in range(ctx.iterations):
                y = x0 @ w
                for _ in range(4):
                    y = (y @ w).tanh()  # long enough compute to keep the race window open
                out = ctx.poisoned_like(y)
                resolved = accessor()
                if explicit:
                    out = comm.all_reduce(y, out, stream=api.current_stream())
                else:
                    out = comm.all_reduce(y, out)
                if (resolved.stream_id, resolved.device_index) == (side.stream_id,
                                                                   side.device_index):
                    ctx.count("foreign_launches")
                value = (out * 2).sum().item()
                expected = 2 * ctx.world_size * y.sum().item()  # same seed on every rank
                if value != value:
                    ctx.count("nan_iters")
                elif abs(value - expected) > 1e-3 * max(1.0, abs(expected)):
                    ctx.count("wrong_iters")
                ctx.iteration_done(i)
            api.synchronize()  # a peer that never launched leaves this rank stuck here
        finally:
            connector.stop()
    finally:
        if cache is not None:
            cache.remove()


class EngineKV:
    """The engine side of the KV-save repros: a layer's KV computed on the engine's own stream.

    As vLLM does, the engine thread computes on a stream of its own (never the legacy default
    stream); each ``next()`` writes fresh, NaN-poisoned-until-written KV there.
    """

    def __init__(self, ctx: RankContext) -> None:
        self.ctx = ctx
        api = ctx.api
        n = ctx.pick(cuda=4096, sim=16)
        self._w = ctx.randn(n, n, scale=n ** -0.5)
        self._x = ctx.randn(n, n)
        api.synchronize()  # inputs ready before serving starts
        self.stream = api.Stream()
        api.set_stream(self.stream)

    def next(self) -> Any:
        kv = self.ctx.poisoned_like(self._x)
        y = self._x @ self._w
        for _ in range(3):
            y = (y @ self._w).tanh()
        kv.copy_(y)
        return kv

    def check_saved(self, saved: Any, kv: Any) -> None:
        """Count the iteration as a corrupt save unless ``saved`` equals the final ``kv``."""
        self.ctx.api.synchronize(self.ctx.device)
        mismatch = ((saved * -1) + kv).sum().item()
        if mismatch != mismatch or abs(mismatch) > 1e-3:
            self.ctx.count("corrupt_save")


class KVLoads:
    """The engine and connector of the KV-load repros: two KV blocks, a compute stream the
    engine keeps busy with a forward, and a connector thread that loads a cache hit into a block
    on its own stream (``set_device`` done right: these repros are about ordering, not devices).

    ``load(block, after)`` issues the copy from the connector's thread, declared as a write of
    ``block``; the fixed variants make the load stream wait on ``after`` (an event the engine
    recorded on the compute stream) first.
    """

    def __init__(self, ctx: RankContext, loaded_value: float) -> None:
        self.ctx = ctx
        api = ctx.api
        n = self.n = ctx.pick(cuda=4096, sim=16)
        self._w = ctx.randn(n, n, scale=n ** -0.5)
        self._x = ctx.randn(n, n)
        self.cache = ctx.poisoned_like(ctx.randn(2, n, n))  # two KV blocks
        self.source = ctx.poisoned_like(self._x).fill_(loaded_value)  # the cache hit
        api.synchronize()
        self.compute = api.Stream()
        api.set_stream(self.compute)

        def make_load_stream() -> Any:
            api.set_device(ctx.device)
            return api.Stream()

        self.load_stream = run_in_thread(make_load_stream, name="kv-connector")

    def forward(self) -> Any:
        """The step in flight: enough compute to keep the compute stream busy for a while."""
        y = self._x @ self._w
        for _ in range(4):
            y = (y @ self._w).tanh()
        return y

    def load(self, block: Any, after: Any) -> Any:
        """Copy the cache hit into ``block`` on the load stream; returns the copy's event."""
        ctx, api, stream = self.ctx, self.ctx.api, self.load_stream

        def issue() -> Any:
            api.set_device(ctx.device)
            with api.stream(stream):
                if ctx.variant == "fixed":
                    stream.wait_event(after)
                with streamcheck.launch("kv.load", stream=stream, device=ctx.device,
                                        writes=[block]):
                    block.copy_(self.source, non_blocking=True)
                done = api.Event()
                done.record()
            return done

        return run_in_thread(issue, name="kv-connector")
