"""Stream leaks driven through real engine methods, imported only after the audit started.

Used inside a child process that has a prepared vLLM tree on its path (``tests/vllm``). The
child starts the audit its own way (``install()``, ``STREAMCHECK`` + start-up hook, vLLM's
``general_plugins``, the pytest plugin), then calls :func:`fake_cuda_first` and :func:`run_all`.
Nothing here imports vLLM at import time, and nothing calls ``instrument_vllm()``: the audit
must find ``PyNcclCommunicator``, the SGLang-shaped communicators and a connector subclass
defined later by itself.

Every launch goes through the engine's own method (vLLM's real ``PyNcclCommunicator``, whose
NCCL library is replaced by a recorder), never through ``streamcheck.launch``. Each form says
which rule ids the audit reported at each call; ``nccl_calls`` counts what reached
the (recorded) NCCL during each form, which must be zero for a leak in ``assert`` mode.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from pathlib import Path
from typing import Any

from streamcheck.repro.actors import run_in_thread

LATE = Path(__file__).resolve().parent


def fake_cuda_first() -> None:
    """Simulated CUDA as ``torch.cuda`` (two devices), and vLLM's CUDA platform shim."""
    import sys

    from streamcheck.doctor import fake_cuda, platform_shim

    fake_cuda.install(fake_cuda.build(device_count=2))
    with contextlib.suppress(ImportError):
        import streamcheck_vllm_stubs  # noqa: F401
    platform_shim.force_cuda_platform()
    if str(LATE) not in sys.path:
        sys.path.insert(0, str(LATE))  # the SGLang-shaped package and the late connector


class FakeNccl:
    """Stands in for vLLM's NCCLLibrary: records each call instead of launching."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("nccl"):
            raise AttributeError(name)
        return lambda *args: self.calls.append(name)


class FakeTensor:
    """Enough of a CUDA tensor for pynccl's checks before it calls NCCL."""

    def __init__(self, device: Any) -> None:
        import torch

        self.device = device
        self.dtype = torch.float32
        self.shape = (4,)

    def data_ptr(self) -> int:
        return 0

    def numel(self) -> int:
        return 4

    def is_contiguous(self) -> bool:
        return True

    def size(self, dim: int | None = None) -> Any:
        return 4 if dim is not None else self.shape


def _args(method: Any, device: Any) -> list[Any]:
    out = []
    for name, p in list(inspect.signature(method).parameters.items())[1:]:
        if p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL,
                                                                    p.VAR_KEYWORD):
            continue
        if name in ("dst", "src", "root", "peer"):
            out.append(1)
        elif "sizes" in name:
            out.append([4, 4])
        else:
            out.append(FakeTensor(device))
    return out


def _rules_of_call(call: Any) -> list[str]:
    """Run one launch; the rule ids the audit reported for it (raised or recorded)."""
    from streamcheck import StreamHazardError, current_auditor

    auditor = current_auditor()
    assert auditor is not None, "the audit is not installed in this process"
    seen: list[str] = []
    unsubscribe = auditor.subscribe(lambda finding: seen.append(finding.rule_id))
    try:
        with contextlib.suppress(StreamHazardError, AssertionError, TypeError, AttributeError):
            call()  # errors from the fake tensors in a body that ran are not the point
    finally:
        unsubscribe()
    return sorted(set(seen))


def _each(comm: Any, methods: list[str]) -> dict[str, list[str]]:
    """Rule ids per method; under ``"nccl_calls"`` what reached the recorded NCCL."""
    before = len(comm.nccl.calls) if hasattr(comm, "nccl") else 0
    out: dict[str, Any] = {
        m: _rules_of_call(lambda m=m: getattr(comm, m)(*_args(getattr(type(comm), m),
                                                               comm.device)))
        for m in methods}
    if hasattr(comm, "nccl"):
        out["nccl_calls"] = len(comm.nccl.calls) - before
    return out


@contextlib.contextmanager
def connector_holding(stream: Any) -> Any:
    """A connector thread inside ``with torch.cuda.stream(stream)`` for the block's duration."""
    import torch

    inside, leave = threading.Event(), threading.Event()

    def connector() -> None:
        with torch.cuda.stream(stream):
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=connector, name="kv-connector")
    thread.start()
    inside.wait(30)
    try:
        yield
    finally:
        leave.set()
        thread.join(30)


def pynccl_forms() -> dict[str, Any]:
    """vLLM's real PyNcclCommunicator: clean, cross-thread leak, error-400 form, stale cache."""
    import torch
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator

    from streamcheck.vllm_compat import cache_kind, vllm_version

    def communicator(device: int) -> Any:
        comm = object.__new__(PyNcclCommunicator)
        comm.disabled, comm.available, comm.world_size, comm.rank = False, True, 2, 0
        comm.device, comm.nccl, comm.comm = torch.device("cuda", device), nccl, None
        return comm

    nccl = FakeNccl()
    kind = cache_kind(vllm_version() or "0")
    methods = [m for m in ("all_reduce", "all_gather", "all_gatherv", "reduce_scatter",
                           "reduce_scatterv", "reduce", "scatter", "send", "recv", "broadcast")
               if "stream" in inspect.signature(getattr(PyNcclCommunicator, m, len)).parameters]
    comm0, comm1 = communicator(0), communicator(1)
    out: dict[str, Any] = {"cache": kind, "methods": methods}
    out["clean"] = _each(comm0, methods)
    with connector_holding(torch.cuda.Stream()):
        out["cross_thread"] = _each(comm0, methods)
    if kind == "module-global":
        # error-400 form: the connector's stream lives on cuda:1; the engine's comm on cuda:0
        with connector_holding(torch.cuda.Stream(device=1)):
            out["error400"] = _each(comm0, methods)
    else:
        # a fresh thread that never set its device: vLLM makes it a new stream on cuda:0
        out["error400"] = run_in_thread(lambda: _each(comm1, methods), "fresh-thread", timeout=30)
        # a switch vLLM's patched setter never sees: its thread-local cache goes stale
        torch.accelerator.set_stream(torch.cuda.Stream())
        out["stale"] = _each(comm0, methods)
    return out


def sglang_forms() -> dict[str, Any]:
    """The two SGLang-shaped communicators, imported now (after the audit started)."""
    import torch
    from sglang.multimodal_gen.runtime.distributed.device_communicators import (
        pynccl as mmgen,
    )
    from sglang.srt.distributed.device_communicators import pynccl as srt

    out: dict[str, Any] = {}
    g = mmgen.PyNcclCommunicator(0)
    out["mmgen_clean"] = _each(g, ["all_reduce", "send"])
    with connector_holding(torch.cuda.Stream()):
        out["mmgen_cross_thread"] = _each(g, ["all_reduce", "send"])
    s0, s1 = srt.PyNcclCommunicator(0), srt.PyNcclCommunicator(1)
    out["srt_clean"] = _each(s0, ["all_reduce", "broadcast"])

    def on_device_1() -> dict[str, list[str]]:
        torch.cuda.set_device(1)  # but the module cached device 0 on its first call
        return _each(s1, ["all_reduce", "broadcast"])

    out["srt_cached_device"] = run_in_thread(on_device_1, "tp-rank-1", timeout=30)
    out["launches_reached"] = len(g.launches) + len(s0.launches) + len(s1.launches)
    return out


def connector_forms() -> dict[str, Any]:
    """A connector subclass defined now; one helper thread on the legacy default stream."""
    import torch
    from late_connector import LateConnector

    LateConnector.__abstractmethods__ = frozenset()  # scheduler-side methods: not used here
    conn = object.__new__(LateConnector)
    torch.cuda.set_stream(torch.cuda.Stream())  # the engine computes on a side stream
    out = {"engine_thread": _rules_of_call(lambda: conn.save_kv_layer("l0", None, None))}
    out["helper_on_default_stream"] = run_in_thread(
        lambda: _rules_of_call(lambda: conn.save_kv_layer("l0", None, None)), "kv-saver",
        timeout=30)
    out["calls"] = list(LateConnector.calls)
    return out


def coverage() -> dict[str, Any]:
    from streamcheck import current_auditor

    auditor = current_auditor()
    assert auditor is not None
    return {"targets": {t.name: {"state": t.state, "methods": t.methods, "detail": t.detail}
                        for t in auditor.coverage.targets()},
            "launches_by_op": auditor.coverage.launches_by_op()}


def run_all() -> dict[str, Any]:
    return {"pynccl": pynccl_forms(), "sglang": sglang_forms(),
            "connector": connector_forms(), **coverage()}


def spawned_main() -> None:
    """A multiprocessing child that runs every form and ends through ``os._exit``, as engine
    workers often do: no ``atexit``, so only the report written as it went can tell."""
    import os

    fake_cuda_first()
    run_all()
    os._exit(0)
