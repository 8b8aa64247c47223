"""The helper threads repros put next to the engine thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from streamcheck.core.errors import StreamHazardError


class ConnectorThread:
    """A KV-connector thread that holds ``with api.stream(S)`` and records an event on S.

    ``make_stream`` runs inside the thread, so a stream it creates lands on the thread's
    current device, which for a fresh thread is device 0 whatever the rank's device is.
    """

    def __init__(self, api: Any, make_stream: Callable[[], Any], name: str = "kv-connector"):
        self._api = api
        self._make_stream = make_stream
        self._entered = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.stream: Any = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.stream = self._make_stream()
            event = self._api.Event()
            with self._api.stream(self.stream):
                event.record()
                self._entered.set()
                self._stop.wait()
        except BaseException as exc:  # surfaced to the engine thread in start()
            self._error = exc
            self._entered.set()

    def start(self, timeout: float = 30.0) -> Any:
        self._thread.start()
        if not self._entered.wait(timeout):
            raise TimeoutError("connector thread did not enter its stream context")
        if isinstance(self._error, StreamHazardError):
            raise self._error  # stopped by the audit: the rank reports it as blocked
        if self._error is not None:
            raise RuntimeError(f"connector thread failed: {self._error!r}") from self._error
        return self.stream

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def run_in_thread(fn: Callable[[], Any], name: str = "kv-worker", timeout: float | None = None
                  ) -> Any:
    """Run ``fn`` in a fresh thread (fresh current device and stream) and return its result.

    An exception in the thread (a StreamHazardError, a CUDA error) is raised again here, so
    the rank reports it like one of its own. Without ``timeout`` a thread stuck in the device
    keeps the caller waiting, as it would keep an engine waiting (the runner's timeout deals
    with it); with one, a thread still running then raises TimeoutError.
    """
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"thread {name!r} did not finish within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")
