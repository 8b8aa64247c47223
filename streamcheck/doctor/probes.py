"""The three behavioural probes of vLLM's ``current_stream()``, run inside the probe child.

Each probe creates its own threads, so a per-thread cache starts empty for it; a module-global
cache cannot be reset, which is the hazard itself. Order matters only for such a global: the
fresh-thread probe runs first (while nothing but the main thread has touched the cache), the
cross-thread probe last. Results are reported in the hazards' own order.

A probe that raises or times out answers "cannot tell" with the reason: a probe that could not
run never reads as "not affected".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from streamcheck.doctor.hazards import FRESH_THREAD_DEVICE, HAZARDS, MODULE_GLOBAL, STALE_CACHE
from streamcheck.doctor.model import HazardResult, Verdict
from streamcheck.doctor.streams import ObservedStream, StreamBackend, Unsupported, describe
from streamcheck.repro import actors

CurrentStream = Callable[[], Any]
T = TypeVar("T")

STEP_TIMEOUT_S = 20.0


class ProbeStuck(RuntimeError):
    """A probe thread did not finish in time (a deadlock in the code under test)."""


def run_in_thread(fn: Callable[[], T], name: str) -> T:
    """Run ``fn`` in a brand-new thread (fresh CUDA thread state) and return its result."""
    try:
        return actors.run_in_thread(fn, name, timeout=STEP_TIMEOUT_S)
    except TimeoutError as exc:
        raise ProbeStuck(str(exc)) from None


def _wait(event: threading.Event, what: str) -> None:
    if not event.wait(STEP_TIMEOUT_S):
        raise ProbeStuck(f"timed out waiting for {what}")


def _placeholder(refs: list[ObservedStream]) -> str | None:
    """Why the probe cannot compare streams, if vLLM returned something that is not one."""
    for ref in refs:
        if not ref.known:
            return (f"current_stream() returned {ref.label}: vLLM did not take its CUDA path "
                    "(is its platform CUDA?)")
    return None


def _catching(fn: Callable[[], None], box: dict[str, Any]) -> Callable[[], None]:
    """``fn`` for a thread whose exception must reach the prober (stored under "error")."""

    def body() -> None:
        try:
            fn()
        except BaseException as exc:
            box["error"] = exc

    return body


# --------------------------------------------------------------------------- probes


def probe_module_global(backend: StreamBackend, current_stream: CurrentStream) -> HazardResult:
    """Thread A enters ``torch.cuda.stream(S)``; does thread B's ``current_stream()`` become S?

    This is the seed incident: the connector thread's stream context reached the main thread's
    pynccl all-reduce through vLLM's cache.
    """
    got: dict[str, ObservedStream] = {}
    b_primed, a_inside, b_read, a_left = (threading.Event() for _ in range(4))

    # Each side releases the other on the way out, so a failure on one side surfaces at once
    # instead of leaving the other waiting for the full timeout.
    def thread_b() -> None:
        try:
            backend.set_device(0)
            got["b_before"] = describe(current_stream())
            b_primed.set()
            _wait(a_inside, "thread A to enter its stream context")
            got["b_during"] = describe(current_stream())
            got["b_real"] = describe(backend.real_current_stream())
            b_read.set()
            _wait(a_left, "thread A to leave its stream context")
            got["b_after"] = describe(current_stream())
        finally:
            b_primed.set()
            b_read.set()

    def thread_a() -> None:
        try:
            backend.set_device(0)
            _wait(b_primed, "thread B to read its stream")
            stream = backend.new_stream(0)
            got["s"] = describe(stream)
            with backend.stream_context(stream):
                a_inside.set()
                _wait(b_read, "thread B to read current_stream()")
        finally:
            a_inside.set()
            a_left.set()

    failure: dict[str, Any] = {}
    b = threading.Thread(target=_catching(thread_b, failure), name="doctor-thread-B",
                         daemon=True)
    b.start()
    run_in_thread(thread_a, "doctor-thread-A")
    b.join(STEP_TIMEOUT_S)
    if b.is_alive():
        raise ProbeStuck("thread B did not finish")
    if "error" in failure:
        raise failure["error"]
    why = _placeholder([got["b_during"], got["s"]])
    if why:
        return HazardResult(MODULE_GLOBAL.id, Verdict.CANNOT_TELL, why, backend.name)
    s, during, after, before = got["s"], got["b_during"], got["b_after"], got["b_before"]
    if during.same(s):
        tail = "" if after.same(before) else (
            f"; after A left the block it returned {after} (B's first call had returned "
            f"{before})")
        evidence = (f"thread A entered `with torch.cuda.stream(S)` (S = {s}); thread B's "
                    f"current_stream() then returned S, while B's real current stream was "
                    f"{got['b_real']}{tail}")
        return HazardResult(MODULE_GLOBAL.id, Verdict.AFFECTED, evidence, backend.name)
    evidence = (f"thread B's current_stream() kept returning its own {during} while thread A "
                f"held S = {s} current through `torch.cuda.stream(S)`")
    return HazardResult(MODULE_GLOBAL.id, Verdict.NOT_AFFECTED, evidence, backend.name)


def probe_fresh_thread_device(backend: StreamBackend,
                              current_stream: CurrentStream) -> HazardResult:
    """Main thread on the last device (as rank >= 1 is); which device does a fresh thread get?

    The main thread calls ``current_stream()`` first, as a worker's pynccl warm-up does, so a
    module-global cache shows here as "the main thread's stream" rather than a device-0 one.
    """
    count = backend.device_count()
    if count < 2:
        return HazardResult(FRESH_THREAD_DEVICE.id, Verdict.CANNOT_TELL,
                            f"cannot tell (needs 2 devices, {count} visible)", backend.name)
    last = count - 1
    backend.set_device(last)
    try:
        main = describe(current_stream())

        def fresh() -> tuple[ObservedStream, int]:
            return describe(current_stream()), backend.current_device()

        got, thread_device = run_in_thread(fresh, "doctor-fresh-thread")
    finally:
        backend.set_device(0)
    why = _placeholder([main, got])
    if why:
        return HazardResult(FRESH_THREAD_DEVICE.id, Verdict.CANNOT_TELL, why, backend.name)
    # Neither the default stream nor the main thread's: made for this thread, as 0.14+ does.
    fresh_stream = got.stream_id != 0 and not got.same(main)
    what = f"a new stream on cuda:{got.device} ({got})" if fresh_stream else str(got)
    head = (f"main thread on cuda:{last} (its current_stream(): {main}); a fresh thread's first "
            f"current_stream() returned {what}")
    if got.device != last:
        evidence = (f"{head}; the fresh thread's current device was cuda:{thread_device}, so "
                    f"rank {last}'s collectives would launch on a cuda:{got.device} stream")
        return HazardResult(FRESH_THREAD_DEVICE.id, Verdict.AFFECTED, evidence, backend.name)
    shared = " (the same stream the main thread's current_stream() returns)" if got.same(
        main) else ""
    return HazardResult(FRESH_THREAD_DEVICE.id, Verdict.NOT_AFFECTED,
                        f"{head}: on the main thread's device{shared}", backend.name)


def probe_stale_cache(backend: StreamBackend, current_stream: CurrentStream) -> HazardResult:
    """Switch streams in C++ (stream context, ``torch.accelerator.set_stream``); is it seen?"""

    def body() -> list[tuple[str, bool | None, str]]:
        backend.set_device(0)
        before = describe(current_stream())
        checks: list[tuple[str, bool | None, str]] = []
        ctx_stream = backend.cpp_stream(0)
        with ctx_stream:
            inside, real = describe(current_stream()), describe(backend.real_current_stream())
        checks.append(_stale_check(f"inside `{backend.cpp_switch}`", describe(ctx_stream),
                                   inside, real, before))
        s2 = backend.new_stream(0)
        previous = backend.real_current_stream()
        try:
            backend.accelerator_set_stream(s2)
        except Unsupported as exc:
            checks.append(("after torch.accelerator.set_stream(s)", None, str(exc)))
            return checks
        try:
            after, real = describe(current_stream()), describe(backend.real_current_stream())
        finally:
            backend.accelerator_set_stream(previous)
        checks.append(_stale_check("after torch.accelerator.set_stream(s)", describe(s2),
                                   after, real, before))
        return checks

    checks = run_in_thread(body, "doctor-stale-cache")
    evidence = "; ".join(f"{where}: {text}" for where, _, text in checks)
    if any(stale for _, stale, _ in checks):
        verdict = Verdict.AFFECTED
    elif all(stale is False for _, stale, _ in checks):
        verdict = Verdict.NOT_AFFECTED
    else:
        verdict = Verdict.CANNOT_TELL
    return HazardResult(STALE_CACHE.id, verdict, evidence, backend.name)


def _stale_check(where: str, target: ObservedStream, cached: ObservedStream,
                 real: ObservedStream, before: ObservedStream) -> tuple[str, bool | None, str]:
    """(where, stale?, what was seen); None when the switch itself did not happen."""
    why = _placeholder([cached])
    if why:
        return where, None, why
    if not real.same(target):
        return where, None, f"torch's current stream is {real}, not the new {target}: the " \
                            "switch did not take, so nothing to compare"
    if cached.same(real):
        return where, False, f"current_stream() returned the new {real}"
    old = " (the stream from before the switch)" if cached.same(before) else ""
    return where, True, f"current_stream() returned {cached}{old} while torch's is {real}"


# --------------------------------------------------------------------------- all together

_RUN_ORDER: tuple[tuple[str, Callable[[StreamBackend, CurrentStream], HazardResult]], ...] = (
    (FRESH_THREAD_DEVICE.id, probe_fresh_thread_device),
    (STALE_CACHE.id, probe_stale_cache),
    (MODULE_GLOBAL.id, probe_module_global),
)


def run_all(backend: StreamBackend, current_stream: CurrentStream) -> list[HazardResult]:
    """Every probe, each failure contained; results in the hazards' reading order."""
    results: dict[str, HazardResult] = {}
    for hazard_id, probe in _RUN_ORDER:
        try:
            results[hazard_id] = probe(backend, current_stream)
        except Exception as exc:
            results[hazard_id] = HazardResult(
                hazard_id, Verdict.CANNOT_TELL,
                f"probe failed: {type(exc).__name__}: {exc}", backend.name)
    return [results[h.id] for h in HAZARDS]
