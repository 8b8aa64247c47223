"""ADAPTED from sglang 0.5.23, sglang/srt/managers/async_d2h_copy_worker.py,
lines 1-8 and 43-99 (same code as c21) -- NOT shipped code.

Adaptation: the stream creation was moved from __init__ into the worker
loop and placed *before* the worker's set_device call (the code's own
comment in c21 warns that the creating thread decides the device). The
device module is held in an attribute, as in the real code.
"""
import logging
import queue
import threading
from typing import Callable

logger = logging.getLogger(__name__)


class AsyncD2HCopyWorker:
    def __init__(self, device_module):
        self.device_module = device_module
        self.d2h_copy_stream = None
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
        self.d2h_copy_stream = self.device_module.Stream()  # expect: SC103
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
