"""Connectors for the real-engine checks: the reference connector with faults, and with a leak.

Loaded by vLLM through ``kv_connector_module_path=engine_connectors`` (this directory on
``PYTHONPATH``), so vLLM's own factory imports them after the audit started, as it would a
user's connector.

* ``FaultyConnector``: streamcheck's connector whose worker corrupts one host block in every
  ``STREAMCHECK_FAULT_EVERY``-th load before it is read (the device-side sums must catch it and
  vLLM recompute those blocks) and sleeps ``STREAMCHECK_SLOW_SAVE_MS`` in every save (a slow
  store). Greedy outputs must not change.
* ``LeakyConnector``: injects vLLM 0.9's module-global ``current_stream`` cache into the worker
  (what pynccl resolves ``stream=None`` with) and starts a connector thread that holds
  ``with torch.cuda.stream(S)`` for the life of the worker: the seed incident. Under
  ``STREAMCHECK=assert`` the first pynccl collective after it must be stopped on every rank.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch
from fault_injection import inject_faults

from streamcheck.connector.vllm_adapter import StreamcheckConnector


class FaultyConnector(StreamcheckConnector):
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        super().register_kv_caches(kv_caches)
        self._counts = inject_faults(
            self.runtime, int(os.environ.get("STREAMCHECK_FAULT_EVERY", "0")),
            float(os.environ.get("STREAMCHECK_SLOW_SAVE_MS", "0")) / 1000)

    def metrics(self) -> dict[str, float | int]:
        return {**super().metrics(), "load_calls": self._counts[0],
                "faults_injected": self._counts[1]}


class LeakyConnector(StreamcheckConnector):
    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        if self.scheduler is None:  # a worker
            inject_global_stream_cache()


def inject_global_stream_cache() -> None:
    """vLLM <= 0.9.2's cache, put back into this vLLM: one module-global "current stream" that
    every thread's patched set_stream overwrites, read by pynccl for ``stream=None``."""
    from vllm.distributed.device_communicators import pynccl

    cache: dict[str, Any] = {}
    previous = torch.cuda.set_stream

    def set_stream(stream: Any) -> None:
        cache["stream"] = stream
        previous(stream)

    def current_stream() -> Any:
        return cache.get("stream") or torch.cuda.current_stream()

    torch.cuda.set_stream = set_stream
    pynccl.current_stream = current_stream
    device = torch.cuda.current_device()
    inside = threading.Event()

    def connector() -> None:
        torch.cuda.set_device(device)
        with torch.cuda.stream(torch.cuda.Stream()):
            inside.set()
            threading.Event().wait()  # holds the stream context for the worker's life

    threading.Thread(target=connector, name="leaky-kv-connector", daemon=True).start()
    inside.wait(30)
