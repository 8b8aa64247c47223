"""Where a warm request's time goes in the real engine, step by step, for any connector.

A connector's own timeline (``connector_timeline.py``) sees only its own calls, so it cannot
say why vLLM's ``OffloadingConnector`` answers a warm request sooner than ours. This records
what the engine itself does, whichever connector it runs: every scheduler ``schedule()`` and
``update_from_output()`` (tokens scheduled, loads reported finished), every model runner
``execute_model()`` and ``sample_tokens()``, and when a request reaches the scheduler, in the
engine core's process (TP=1: scheduler and worker share it), on ``CLOCK_MONOTONIC`` like the
driver's ``time.perf_counter_ns``, so the driver's request windows line up with the engine's
steps.

``engine_check.py``'s TTFT cases call :func:`start` and :func:`stop` through
``collective_rpc`` around the warm pass (``"steps": true`` in a case) and
:func:`summarize` on what comes back. Record: ``[ns, what, detail]``; ``what`` ends in ``+``
(entered) or ``-`` (returned).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

Record = list[Any]  # [ns (CLOCK_MONOTONIC), what, detail]
_ATTR = "_engine_steps"


def _tokens(scheduler_output: Any) -> int:
    return int(getattr(scheduler_output, "total_num_scheduled_tokens", 0) or 0)


def _finished_recving(model_output: Any) -> int:
    kv = getattr(model_output, "kv_connector_output", None)
    return len(getattr(kv, "finished_recving", None) or ())


def _wrap(records: list[Record], what: str, fn: Callable[..., Any],
          enter: Callable[..., int] | None = None, leave: Callable[..., int] | None = None
          ) -> Callable[..., Any]:
    def traced(*args: Any, **kwargs: Any) -> Any:
        records.append([time.perf_counter_ns(), what + "+",
                        enter(*args, **kwargs) if enter is not None else 0])
        result = fn(*args, **kwargs)
        records.append([time.perf_counter_ns(), what + "-",
                        leave(result, *args, **kwargs) if leave is not None else 0])
        return result

    traced.__wrapped__ = fn  # type: ignore[attr-defined]
    return traced


def _schedulers() -> list[Any]:
    """The live vLLM v1 schedulers of this process (the engine core's, at TP=1). vLLM freezes
    its start-up heap (``gc.freeze()``), which hides the scheduler from ``gc.get_objects``: the
    heap is thawed for the search and frozen again after it (which then freezes every object
    alive at that moment, a few more than vLLM froze: the collector just skips them)."""
    from vllm.v1.core.sched.scheduler import Scheduler

    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    try:
        return [o for o in gc.get_objects() if isinstance(o, Scheduler)]
    finally:
        if frozen:
            gc.freeze()


def _connector() -> Any:
    """This worker's KV connector, None without one."""
    from vllm.distributed.kv_transfer import get_kv_transfer_group, has_kv_transfer_group

    return get_kv_transfer_group() if has_kv_transfer_group() else None


def start(worker: Any) -> int:
    """Trace this process's engine from now on (``collective_rpc``: ``worker`` is the
    worker). Returns how many schedulers were found: 0 means the scheduler runs elsewhere
    (TP > 1 or another executor) and only the worker's steps are traced. The KV connector's
    ``save_kv_layer``, which vLLM calls after every attention layer of a forward whatever the
    connector, marks the layers (``layer``)."""
    records: list[Record] = []
    runner = worker.model_runner
    runner.execute_model = _wrap(records, "execute", runner.execute_model,
                                 enter=lambda *a, **k: _tokens(_arg(a, k, 0, "scheduler_output")))
    runner.sample_tokens = _wrap(records, "sample", runner.sample_tokens)
    found = _schedulers()
    for sched in found:
        sched.schedule = _wrap(records, "schedule", sched.schedule,
                               leave=lambda out, *a, **k: _tokens(out))
        sched.update_from_output = _wrap(
            records, "update", sched.update_from_output,
            enter=lambda *a, **k: _finished_recving(_arg(a, k, 1, "model_runner_output")))
        sched.add_request = _wrap(records, "add_request", sched.add_request)
    connector = _connector()
    if connector is not None:
        connector.save_kv_layer = _wrap(records, "layer", connector.save_kv_layer)
    setattr(worker, _ATTR, (records, found, connector))
    return len(found)


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    """A wrapped method's argument, passed by position or by name."""
    return args[index] if len(args) > index else kwargs.get(name)


def stop(worker: Any) -> list[Record]:
    """The records since :func:`start`; the engine's methods are themselves again."""
    records, schedulers, connector = getattr(worker, _ATTR, ([], [], None))
    runner = worker.model_runner
    for name in ("execute_model", "sample_tokens"):
        _unwrap(runner, name)
    for sched in schedulers:
        for name in ("schedule", "update_from_output", "add_request"):
            _unwrap(sched, name)
    if connector is not None:
        _unwrap(connector, "save_kv_layer")
    if hasattr(worker, _ATTR):
        delattr(worker, _ATTR)
    return records


def _unwrap(obj: Any, name: str) -> None:
    if hasattr(obj.__dict__.get(name), "__wrapped__"):
        del obj.__dict__[name]  # the class's method again


def request_steps(records: list[Record], window: tuple[int, int]) -> dict[str, Any]:
    """One request's steps: ``window`` is the driver's (start, end) of a request sent alone.

    ``steps``: each ``schedule()`` in the window as [ms from the window's start, its ms,
    tokens it scheduled]; ``schedules``: how many (None when no scheduler was traced);
    ``to_forward``: ms to the first ``schedule()`` that scheduled tokens; ``forward``: the
    first ``execute_model()`` with tokens, in ms (at TP=1 the engine runs its steps one after
    another, so it is that step's); ``after_forward``: ms from the first ``sample_tokens()``
    return after it (or its own return, when no sample follows before the next
    ``schedule()``) to the window's end; ``loads_reported``: ms to the first
    ``update_from_output()`` that reported a finished load; ``arrive``: ms to
    ``add_request``; ``per_layer``: the forward's ms a layer, its first to its last layer
    (``layer`` records), over the layers between. A phase not in the window is None."""
    begin, end = window
    inside = [r for r in records if begin <= r[0] <= end]

    def ms(ns: int) -> float:
        return round((ns - begin) / 1e6, 3)

    steps, opened = [], None
    arrive = loads = forward_sched = forward_ms = forward_end = None
    exec_open = None
    sampled = False  # the forward's sample_tokens came back (or a later step began)
    layers: list[int] = []  # the forward's layers (in the first execute with tokens)
    for ns, what, detail in inside:
        if what == "schedule+":
            opened = ns
            sampled = sampled or forward_end is not None
        elif what == "schedule-" and opened is not None:
            steps.append([ms(opened), round((ns - opened) / 1e6, 3), detail])
            if detail and forward_sched is None:
                forward_sched = ms(opened)
            opened = None
        elif what == "add_request+" and arrive is None:
            arrive = ms(ns)
        elif what == "update+" and detail and loads is None:
            loads = ms(ns)
        elif what == "execute+":
            exec_open = (ns, detail)
        elif what == "layer+" and exec_open is not None and exec_open[1] and forward_ms is None:
            layers.append(ns)
        elif what == "execute-" and exec_open is not None:
            if exec_open[1] and forward_ms is None:
                forward_ms = round((ns - exec_open[0]) / 1e6, 3)
                forward_end = ns
            exec_open = None
        elif what == "sample-" and forward_end is not None and not sampled:
            forward_end, sampled = ns, True
    traced = any(r[1].startswith("schedule") for r in records)
    return {"total": ms(end), "arrive": arrive, "loads_reported": loads,
            "to_forward": forward_sched, "forward": forward_ms,
            "after_forward": None if forward_end is None else round((end - forward_end) / 1e6, 3),
            "per_layer": (round((layers[-1] - layers[0]) / (len(layers) - 1) / 1e6, 3)
                          if len(layers) > 1 else None),
            "schedules": len(steps) if traced else None, "steps": steps}


def summarize(records: list[Record], windows: list[tuple[int, int]]) -> dict[str, Any]:
    """Each request's steps (:func:`request_steps`) and the medians of their phases."""
    rows = [request_steps(records, w) for w in windows]
    medians = {}
    for key in ("total", "arrive", "loads_reported", "to_forward", "forward",
                "after_forward", "per_layer", "schedules"):
        values = [r[key] for r in rows if r[key] is not None]
        medians[key] = round(statistics.median(values), 3) if values else None
    return {"median": medians, "requests": rows}
