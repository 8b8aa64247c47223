"""Faithful models of the current-stream caches that engines shipped, for repros to run.

They patch a ``torch.cuda``-shaped namespace the way vLLM did, so the same code runs against
real ``torch.cuda`` and against a simulated process view. Where vLLM itself is importable,
repros use its real ``current_stream`` instead (see :mod:`streamcheck.vllm_compat`).
"""

from __future__ import annotations

import threading
from typing import Any


class GlobalStreamCache:
    """vLLM <= 0.9.2: one module-global ``_current_stream``, updated by a patched set_stream.

    Every thread of the process reads the same value, so a helper thread's
    ``with torch.cuda.stream(S)`` changes the stream the engine thread's collectives use.
    """

    def __init__(self, api: Any) -> None:
        self._api = api
        self._current: Any = None
        self._prev_set_stream = api.set_stream
        self._patched = self._patched_set_stream
        api.set_stream = self._patched

    def current_stream(self) -> Any:
        if self._current is None:
            self._current = self._api.current_stream()
        return self._current

    def _patched_set_stream(self, stream: Any) -> None:
        self._current = stream
        self._prev_set_stream(stream)

    def remove(self) -> None:
        if self._api.set_stream is self._patched:
            self._api.set_stream = self._prev_set_stream


class ThreadLocalStreamCache:
    """vLLM >= 0.14: a per-thread cache; a fresh thread gets a NEW stream on its current device.

    Correct across threads, but it goes stale when a thread switches streams without the
    patched setter (``with torch.Stream(...)``, ``torch.accelerator.set_stream``), and a helper
    thread that never called ``set_device`` gets a stream on device 0.
    """

    def __init__(self, api: Any) -> None:
        self._api = api
        self._local = threading.local()
        self._prev_set_stream = api.set_stream
        self._patched = self._patched_set_stream
        api.set_stream = self._patched

    def current_stream(self) -> Any:
        stream = getattr(self._local, "value", None)
        if stream is None:
            stream = self._local.value = self._api.Stream()
            self._prev_set_stream(stream)
        return stream

    def _patched_set_stream(self, stream: Any) -> None:
        self._local.value = stream
        self._prev_set_stream(stream)

    def remove(self) -> None:
        if self._api.set_stream is self._patched:
            self._api.set_stream = self._prev_set_stream
