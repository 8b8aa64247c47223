"""Source: sglang 0.5.23, sglang/srt/managers/async_d2h_copy_worker.py,
lines 1-8 and 43-99 (verbatim minimization).

The private stream is created on the caller's thread in __init__ through a
device module held in a variable; the worker thread sets its device first
and only makes that stream current. No set_stream patch is imported. No
finding.
"""
import logging
import queue
import threading
from typing import Callable

logger = logging.getLogger(__name__)


class AsyncD2HCopyWorker:
    def __init__(self, device_module):
        self.device_module = device_module
        # Private stream, created and owned here so nothing outside this worker
        # can enqueue onto it (see class docstring). Created on the caller's
        # thread, so it lands on the current device.
        self.d2h_copy_stream = device_module.Stream()
        self._device_index = device_module.current_device()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(
            target=self._loop, name="sglang-d2h-copy-worker", daemon=True
        )
        self._thread.start()

    def submit(self, copy_fn: Callable[[], None]):
        src_ready = self.device_module.Event()
        src_ready.record()
        self._queue.put((src_ready, copy_fn))

    def _loop(self):
        self.device_module.set_device(self._device_index)
        while True:
            item = self._queue.get()
            if item is None:
                return
            src_ready, copy_fn = item
            try:
                src_ready.synchronize()
                with self.device_module.stream(self.d2h_copy_stream):
                    copy_fn()
                self.d2h_copy_stream.synchronize()
            except Exception:
                logger.exception("AsyncD2HCopyWorker copy failed")
